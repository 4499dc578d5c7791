#if os(Linux)
import Foundation
import KVM
import MSIX
import PCI
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

let virtiofsdInstalled = Testing.ConditionTrait.enabled(
    if: FileSystemBackend.isInstalled,
    "skipped: virtiofsd is not installed at /usr/lib/qemu/virtiofsd (apt-get install qemu-system-common)")

/// A private host directory for virtiofsd to share, removed at deinit.
final class SharedDirectory {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "irqfd-virtio-fs-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func write(_ name: String, _ bytes: [UInt8]) throws {
        guard FileManager.default.createFile(atPath: path + "/" + name, contents: Data(bytes)) else {
            throw TestFailure("cannot create \(path)/\(name)")
        }
    }
    func read(_ name: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path + "/" + name).map { [UInt8]($0) }
    }
}

/// A VM with the virtio-fs device served by a virtiofsd on `share`, running the driver guest.
final class FsGuest {
    typealias L = VirtioFsGuestLayout
    static let tag = "irqfd-share"
    let share: SharedDirectory
    let backend: FileSystemBackend
    let vm: TinyVM
    let device: VirtioFsDevice
    let readData: [UInt8]
    let writeData: [UInt8]

    init(
        share: SharedDirectory, delivery: InterruptDelivery = .irqfd, coalescesCommits: Bool = true,
        readSize: Int = 3000, writeSize: Int = 2000, rounds: Int = 0
    ) throws {
        self.share = share
        readData = (0..<readSize).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 / 256 &+ 5) }
        writeData = (0..<writeSize).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 0x40) }
        try share.write("from-host.bin", readData)
        backend = try FileSystemBackend(sharedDirectory: share.path)
        vm = try TinyVM(.init(cpus: 1, coalescesCommits: coalescesCommits))
        device = try VirtioFsDevice.attach(to: vm, socketPath: backend.socketPath, tag: Self.tag, delivery: delivery)
        try Self.load(vm, readData: readData, writeData: writeData, rounds: rounds)
    }

    /// Loads the driver guest into `vm` with its parameters: read `from-host.bin`
    /// (which must hold `readData`), create `from-guest.bin` with `writeData`.
    static func load(_ vm: TinyVM, readData: [UInt8], writeData: [UInt8], rounds: Int = 0) throws {
        try vm.load(GuestProgram.virtioFs.image)
        let m = vm.memory
        m.load(Array("from-host.bin".utf8) + [0], at: L.readName)
        m.load(Array("from-guest.bin".utf8) + [0], at: L.createName)
        m.write32(UInt32(readData.count), at: L.readSize)
        m.write32(UInt32(writeData.count), at: L.writeSize)
        m.write32(UInt32(rounds), at: L.rounds)
        m.load(readData, at: L.expected)
        m.load(writeData, at: L.writeData)
    }

    deinit {
        device.disconnect()  // virtiofsd exits when its connection closes; stop() then only reaps it
        backend.stop()
    }

    func word(_ address: UInt64) -> Int { Int(vm.memory.read32(at: address)) }
    func interrupts(msix v: Int) -> Int {
        Int(vm.memory.read32(at: InterruptCounterLayout.count(cpu: 0, vector: L.idtVector(msix: v))))
    }
    var report: String {
        "step \(word(L.step)) error \(Int32(bitPattern: UInt32(word(L.error)))) requests \(word(L.requests)); "
            + "device \(device.counters); backend error \(String(describing: device.lastBackendError))"
    }
}

@Suite(needsKVM, virtiofsdInstalled) struct VirtioFsGuestTests {
    @Test func theGuestReadsAHostFileAndWritesANewOneTheHostThenReads() throws {
        let share = try SharedDirectory()
        // The kernel path alone: a coalescing partition relays while an entry waits for its commit.
        let guest = try FsGuest(share: share, coalescesCommits: false)
        let before = guest.vm.vm.counters.snapshot
        let outcome = guest.vm.run(timeout: .seconds(60))
        #expect(outcome == .exited(code: 0), "\(outcome); \(guest.report)")
        typealias L = FsGuest.L
        #expect(guest.word(L.phase) == 2)
        #expect(guest.word(L.fuseMajor) == 7, "virtiofsd speaks FUSE 7.x")
        #expect(guest.word(L.requests) == 8, "INIT, LOOKUP, OPEN, READ, CREATE, WRITE and two RELEASEs")
        #expect(guest.word(L.readLength) == 3000)
        #expect(guest.word(L.written) == 2000)
        #expect(share.read("from-guest.bin") == guest.writeData, "the host sees what the guest wrote")
        #expect(share.read("from-host.bin") == guest.readData, "the file the guest read is unchanged")
        #expect(guest.interrupts(msix: 2) >= 8, "one interrupt per request at least, on the request queue's vector")
        // libvhost-user (virtiofsd's) signals a call fd once when SET_VRING_CALL
        // hands it over ("in case of I/O hang after reconnecting"): that one only.
        #expect(guest.interrupts(msix: 1) <= 1, "nothing on hiprio but the signal at SET_VRING_CALL")
        #expect(guest.device.counters.notifyExits == 0)
        #expect((guest.vm.vm.counters.snapshot - before).signalMsis == 0, "irqfd delivery made no injection")
    }

    @Test func theGuestReadsTheTagAndRequestQueueCountFromTheDeviceConfiguration() throws {
        let share = try SharedDirectory()
        let guest = try FsGuest(share: share)
        let outcome = guest.vm.run(timeout: .seconds(60))
        #expect(outcome == .exited(code: 0), "\(outcome); \(guest.report)")
        let config = guest.vm.memory.bytes(at: FsGuest.L.configuration, count: 40)
        #expect(
            config == Array(FsGuest.tag.utf8) + [UInt8](repeating: 0, count: 36 - FsGuest.tag.utf8.count) + [
                1, 0, 0, 0,
            ])
        #expect(guest.device.deviceConfiguration == config)
        // PCI identity: vendor 0x1AF4, device 0x105A; class 0x018000, revision 1.
        #expect(guest.device.configRead(offset: 0, size: 4) == 0x105A_1AF4)
        #expect(guest.device.configRead(offset: 8, size: 4) == 0x0180_0001)
        #expect(guest.device.queueCount == 2, "hiprio and one request queue")
    }

    @Test func aMaskedRequestVectorHoldsTheCompletionInThePBAAndUnmaskDeliversOne() throws {
        let share = try SharedDirectory()
        // A third round waits at the gate: nothing follows the unmasked completion until it opens.
        let guest = try FsGuest(share: share, rounds: 3)
        typealias L = FsGuest.L
        guest.vm.start()
        defer {
            guest.vm.stop()
            _ = guest.vm.wait()
        }
        guest.vm.memory.write32(1, at: L.gate)
        #expect(guest.vm.waitUntil(timeout: .seconds(60)) { guest.word(L.roundsDone) == 1 }, "\(guest.report)")
        usleep(50_000)
        let emulator = guest.device.emulator
        let messages = guest.device.frontend.messagesSent
        let afterRound = guest.interrupts(msix: 2)
        // Request queue 1's vector is 2: mask it (vector control, BAR1 + 2 * 16 + 12).
        emulator.write(bar: 1, offset: 2 * 16 + 12, size: 4, value: 1)
        guest.vm.memory.write32(2, at: L.gate)
        // Seven requests before the rounds, then one a round: used idx 9 is the second round's reply.
        let usedIndex = { guest.vm.memory.read32(at: L.requestUsedRing) >> 16 }
        #expect(guest.vm.waitUntil(timeout: .seconds(30)) { usedIndex() == 9 }, "virtiofsd answers the second round")
        usleep(50_000)
        #expect(guest.interrupts(msix: 2) == afterRound, "no interrupt while masked")
        #expect(emulator.read(bar: 1, offset: 0x800, size: 8) & 0b100 != 0, "PBA bit 2 set")
        #expect(guest.word(L.roundsDone) == 1, "the guest still waits for the interrupt")
        emulator.write(bar: 1, offset: 2 * 16 + 12, size: 4, value: 0)
        #expect(guest.vm.waitUntil { guest.interrupts(msix: 2) == afterRound + 1 })
        #expect(guest.vm.waitUntil(timeout: .seconds(30)) { guest.word(L.roundsDone) == 2 }, "\(guest.report)")
        usleep(50_000)
        #expect(guest.interrupts(msix: 2) == afterRound + 1, "exactly one")
        #expect(emulator.read(bar: 1, offset: 0x800, size: 8) & 0b100 == 0, "PBA bit 2 clear after delivery")
        guest.vm.memory.write32(3, at: L.gate)
        #expect(guest.vm.waitUntil(timeout: .seconds(30)) { guest.word(L.phase) == 2 }, "\(guest.report)")
        // FUSE requests travel on the rings, never on the vhost-user socket.
        #expect(guest.device.frontend.messagesSent == messages, "no vhost-user message for mask/unmask")
    }
}

@Suite(needsKVM, virtiofsdInstalled) struct VirtioFsDeliveryTests {
    /// What the guest saw and left on the host.
    struct Seen: Equatable {
        var outcome: Outcome
        var requests: Int
        var readLength: Int
        var written: Int
        var configuration: [UInt8]
        var hostFile: [UInt8]?
    }

    func run(_ delivery: InterruptDelivery) throws -> Seen {
        let share = try SharedDirectory()
        let guest = try FsGuest(share: share, delivery: delivery)
        let outcome = guest.vm.run(timeout: .seconds(60))
        #expect(outcome == .exited(code: 0), "\(delivery): \(outcome); \(guest.report)")
        typealias L = FsGuest.L
        return Seen(
            outcome: outcome, requests: guest.word(L.requests), readLength: guest.word(L.readLength),
            written: guest.word(L.written),
            configuration: guest.vm.memory.bytes(at: L.configuration, count: 40),
            hostFile: share.read("from-guest.bin"))
    }

    @Test func everyDeliveryModeGivesTheGuestTheSameResults() throws {
        let irqfd = try run(.irqfd)
        #expect(irqfd.outcome == .exited(code: 0) && irqfd.requests == 8 && irqfd.written == 2000)
        #expect(try run(.relay) == irqfd)
        #expect(try run(.userspace) == irqfd)
    }
}

@Suite(virtiofsdInstalled) struct VirtiofsdBackendTests {
    @Test func moreRequestQueuesThanVirtiofsdServesAreRefusedByName() throws {
        let share = try SharedDirectory()
        let backend = try FileSystemBackend(sharedDirectory: share.path)
        defer { backend.stop() }
        // virtiofsd 7.2 answers GET_QUEUE_NUM with 2: hiprio and one request queue.
        let fs = try VirtioFs(tag: "t", requestQueues: 2)
        let frontend = try VhostUserFrontend(socketPath: backend.socketPath)
        defer { frontend.close() }
        _ = try frontend.handshake(wantedProtocolFeatures: fs.wantedProtocolFeatures)
        #expect(throws: VhostUserError.self) { try fs.negotiate(frontend) }
        do { _ = try fs.negotiate(frontend) } catch {
            #expect("\(error)".contains("serves 2 queues"), "\(error)")
        }
    }

    @Test func virtiofsdOffersVersion1AndTheDeviceOffersOnlyWhatNeedsNothingFromTheVMM() throws {
        let share = try SharedDirectory()
        let backend = try FileSystemBackend(sharedDirectory: share.path)
        defer { backend.stop() }
        let fs = try VirtioFs(tag: "t")
        let frontend = try VhostUserFrontend(socketPath: backend.socketPath)
        defer { frontend.close() }
        let features = try frontend.handshake(wantedProtocolFeatures: fs.wantedProtocolFeatures)
        #expect(features & VirtioFeature.version1 != 0)
        let offered = fs.offeredFeatures(backend: features)
        #expect(offered & ~(VirtioFeature.version1 | VirtioFs.Feature.safeBackendFeatures) == 0)
        #expect(offered & VirtioFeature.vhostProtocolFeatures == 0, "PROTOCOL_FEATURES stays between VMM and backend")
        #expect(try fs.negotiate(frontend) == fs.configuration)
    }
}

@Suite struct VirtioFsTypeTests {
    @Test func theTypeIsDevice0x105AOfClass0x018000WithHiprioAndNRequestQueues() throws {
        let fs = try VirtioFs(tag: "share", requestQueues: 3)
        #expect(fs.pciDeviceID == 0x105A)
        #expect(fs.classCode == 0x01_8000)
        #expect(fs.queueCount == 4)
        #expect(fs.configuration.count == 40)
        #expect(Array(fs.configuration[0..<5]) == Array("share".utf8))
        #expect(fs.configuration[5..<36].allSatisfy { $0 == 0 })
        #expect(Array(fs.configuration[36..<40]) == [3, 0, 0, 0])
    }

    @Test(arguments: ["", String(repeating: "x", count: 37), "a\u{0}b"])
    func aTagThatDoesNotFitIsRefused(tag: String) {
        #expect(throws: VirtioError.self) { try VirtioFs(tag: tag) }
    }

    @Test func aTagOfExactly36BytesHasNoNul() throws {
        let tag = String(repeating: "t", count: 36)
        #expect(try VirtioFs(tag: tag).configuration[0..<36].allSatisfy { $0 == UInt8(ascii: "t") })
    }

    @Test(arguments: [0, 8])
    func aRequestQueueCountOutside1To7IsRefused(queues: Int) {
        #expect(throws: VirtioError.self) { try VirtioFs(tag: "t", requestQueues: queues) }
    }
}

@Suite(needsKVM, virtiofsdInstalled) struct VirtioFsRunCommandTests {
    @Test func irqfdRunWithAShareStartsVirtiofsdAndTheGuestCompletesFuseInit() throws {
        let share = try SharedDirectory()
        let guestPath = NSTemporaryDirectory() + "irqfd-virtio-fs-guest-\(UUID().uuidString).bin"
        guard FileManager.default.createFile(atPath: guestPath, contents: Data(GuestProgram.virtioFs.image)) else {
            throw TestFailure("cannot create \(guestPath)")
        }
        defer { try? FileManager.default.removeItem(atPath: guestPath) }
        // No parameters can be set through the command: the guest negotiates,
        // starts the queues and sends FUSE_INIT only, and exits 0 on its reply.
        let (status, stdout, stderr) = try runProcess(
            try builtExecutable("irqfd"), ["run", guestPath, "--share", share.path, "--tag", "hostdir"])
        #expect(status == 0, "exit \(status):\n\(stdout)\(stderr)")
        #expect(stderr.contains("virtio-fs 00:02.0 served by virtiofsd"), "\(stderr)")
    }

    @Test func irqfdRunRefusesATagWithoutADevice() throws {
        let (status, _, stderr) = try runProcess(try builtExecutable("irqfd"), ["run", "/dev/null", "--tag", "x"])
        #expect(status != 0)
        #expect(stderr.contains("--tag needs --vhost-user-fs or --share"), "\(stderr)")
    }
}
#endif

#if os(Linux)
@Suite(virtiofsdInstalled) struct VirtiofsdLauncherTests {
    @Test func theLauncherFindsVirtiofsdListeningPastTheFirst4KiBOfProcNetUnix() throws {
        // 600 more sockets: /proc/net/unix grows to tens of KiB, most of it
        // past what one read of the file returns.
        let pairs = try SocketPairs(count: 300)
        defer { pairs.close() }
        let share = try SharedDirectory()
        let backend = try FileSystemBackend(sharedDirectory: share.path, timeout: .seconds(5))
        defer { backend.stop() }
        #expect(VirtiofsdProcess.isServing(backend.socketPath))
        let frontend = try VhostUserFrontend(socketPath: backend.socketPath)
        frontend.close()
    }

    @Test func virtiofsdThatAcceptedItsOneFrontEndStillCountsAsServing() throws {
        let share = try SharedDirectory()
        let backend = try FileSystemBackend(sharedDirectory: share.path)
        defer { backend.stop() }
        let frontend = try VhostUserFrontend(socketPath: backend.socketPath)
        defer { frontend.close() }
        _ = try frontend.getFeatures()  // answered: virtiofsd has accepted, and closed its listener
        #expect(VirtiofsdProcess.isServing(backend.socketPath))
    }
}
#endif
