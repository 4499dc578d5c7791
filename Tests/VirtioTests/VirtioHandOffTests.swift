#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdLinux
import KVMTestSupport
import MSIX
import PCI
import SystemPackage
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

/// The virtio-blk stress guest (`GuestProgram.virtioBlkStress`: 64 reads in
/// flight, every completion taken in the queue vector's handler, never by
/// polling) on a real vhost-user backend, its VM and device handed to a
/// successor VM over the same RAM again and again while requests are in flight.
final class VirtioHandOffRig {
    typealias L = VirtioBlkStressLayout
    static let cpus = 2
    let image: TestImage
    let backend: BlockBackend
    let total: Int
    private(set) var vm: TinyVM
    private(set) var device: VirtioBlkDevice
    /// Messages each device's front-end sent from its first freeze (or its
    /// resume) to its release: the backend hears nothing of a hand-off.
    private(set) var messagesDuringHandOffs = 0
    /// Requests in flight (submitted, not completed) at each freeze.
    private(set) var inFlightAtFreeze: [Int] = []
    /// The predecessors' RAM mappings, kept so that no successor maps RAM
    /// where a predecessor did: a successor process maps it elsewhere too.
    private var predecessorMappings: [GuestMemory] = []
    /// Each hand-off's device steps: the freeze, and the successor's resume (decoding the state included).
    private(set) var freezeTimes: [Duration] = []
    private(set) var resumeTimes: [Duration] = []

    init(
        kind: DiskBackendKind, delivery: InterruptDelivery = .irqfd, total: Int, inFlight: Int = 64,
        sectors: Int = 2048
    ) throws {
        self.total = total
        image = try TestImage(sectors: sectors) { i in
            withUnsafeBytes(of: L.imageWord(sector: i / 512, dword: (i % 512) / 4).littleEndian) { $0[i % 4] }
        }
        backend = try BlockBackend(kind: kind, image: image.path)
        vm = try TinyVM(.init(cpus: Self.cpus))
        device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath, delivery: delivery)
        try vm.startVirtioBlkStress(total: total, inFlight: inFlight, sectors: sectors)
        let vm = vm
        let running = vm.waitUntil(timeout: .seconds(60)) {
            vm.memory.read32(at: L.phase) >= 1
                && (0..<Self.cpus).allSatisfy { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: $0)) == 1 }
        }
        guard running else { throw TestFailure("the stress guest is not running: \(summary)") }
    }

    deinit {
        vm.stop(disk: device, backend: backend)
    }

    func word(_ address: UInt64) -> Int { Int(vm.memory.read32(at: address)) }
    var phase: Int { word(L.phase) }
    var completed: Int { word(L.completed) }
    var submitted: Int { word(L.submitted) }
    var summary: String {
        "phase \(phase), submitted \(submitted), completed \(completed), consumed \(word(L.consumed)), "
            + "PBA \(device.read(address: VirtioBlkDevice.msixBase + UInt64(VirtioBlkDevice.pbaOffset), size: 8)), "
            + "device status \(device.status), backend error \(String(describing: device.lastBackendError)), "
            + "backend running \(backend.isRunning), \(device.counters), emulator \(device.emulator.counters)"
    }

    /// The inode of the device's backend socket: the same connection, whichever process or VM holds it.
    var connectionInode: UInt64? {
        guard let socket = device.frontend.socket else { return nil }
        var info = stat()
        guard fstat(socket.rawValue, &info) == 0 else { return nil }
        return UInt64(info.st_ino)
    }

    /// Connections the backend accepted on its socket and still has open.
    var backendConnections: Int { acceptedUnixConnections(listeningAt: backend.socketPath) }

    /// Pauses the guest and freezes the device, as a VMM's live update starts.
    func freeze() throws -> (VirtioDeviceFreeze<VirtioBlk>, sentBefore: Int) {
        guard vm.pause() else { throw TestFailure("the vCPUs did not stop: \(summary)") }
        inFlightAtFreeze.append(submitted - completed)
        let sent = device.frontend.messagesSent
        do { return (try device.freeze(), sent) } catch {
            vm.resume()
            throw error
        }
    }

    /// Hands the guest and the device to a new VM over the same RAM (see ``handOff(_:_:)``).
    func handOff() throws {
        inFlightAtFreeze.append(submitted - completed)
        predecessorMappings.append(vm.memory)
        let moved = try VirtioHandOffRig.handOff(vm, device)
        freezeTimes.append(moved.freeze)
        resumeTimes.append(moved.resume)
        messagesDuringHandOffs += moved.messages
        (vm, device) = (moved.vm, moved.device)
    }

    /// Hands a running guest and its device to a new VM over the same RAM,
    /// as a successor VMM process would take them: the vCPUs pause, the
    /// device freezes, its state goes through its encoding, the descriptors
    /// are the successor's own copies (what SCM_RIGHTS gives it), the
    /// successor resumes the device and starts, and the old VM stops and
    /// releases the device. `messages`: what either front-end sent meanwhile.
    static func handOff<T: VirtioDeviceType & Codable>(_ vm: TinyVM, _ device: VirtioPCIDevice<T>) throws -> (
        vm: TinyVM, device: VirtioPCIDevice<T>, messages: Int, freeze: Duration, resume: Duration
    ) {
        let clock = ContinuousClock()
        guard vm.pause() else { throw TestFailure("the vCPUs did not stop") }
        // What the guest asked of the backend before the pause is sent first
        // (the freeze would wait for it too): the count from here is the hand-off's own.
        device.waitUntilIdle()
        let sentBefore = device.frontend.messagesSent
        let freezing = clock.now
        let frozen: VirtioDeviceFreeze<T>
        do { frozen = try device.freeze() } catch {
            vm.resume()
            throw error
        }
        let freeze = clock.now - freezing
        let bytes = frozen.state.encoded()
        let ram = try GuestMemory(
            mapping: try vm.memory.fileDescriptor.duplicateCloseOnExec(), size: vm.configuration.memorySize)
        let next = try TinyVM(vm.configuration, incoming: ram)
        let received = try frozen.descriptors.map { try $0.duplicateCloseOnExec() }
        try next.restoreMachineState(try vm.saveMachineState())
        let resuming = clock.now
        let resumed = try VirtioPCIDevice<T>.resume(attachingTo: next, encoded: bytes, descriptors: received)
        let resume = clock.now - resuming
        next.start()
        vm.stop()
        vm.wait()
        try device.release()
        let messages = device.frontend.messagesSent - sentBefore + resumed.frontend.messagesSent
        return (next, resumed, messages, freeze, resume)
    }

    /// The median and the largest of `times`, in microseconds.
    static func figures(_ times: [Duration]) -> String {
        let sorted = times.sorted()
        guard let last = sorted.last else { return "none" }
        func us(_ d: Duration) -> Int {
            Int(d.components.seconds) * 1_000_000 + Int(d.components.attoseconds / 1_000_000_000_000)
        }
        return "p50 \(us(sorted[sorted.count / 2])) µs, max \(us(last)) µs"
    }

    /// Waits until `count` more requests completed (or all did).
    func waitForProgress(_ count: Int, timeout: Duration = .seconds(60)) -> Bool {
        let target = min(completed + count, total)
        return vm.waitUntil(timeout: timeout) { self.completed >= target || self.phase == 2 }
    }

    /// Requests whose bitmap bit is clear.
    func missingRequests() -> [Int] {
        let bytes = vm.memory.bytes(at: L.bitmap, count: (total + 7) / 8)
        return (0..<total).filter { bytes[$0 / 8] & (1 << ($0 % 8)) == 0 }
    }

    /// Checks that every request completed exactly once with its sector's data.
    func expectEveryRequestOnce(_ what: String) {
        #expect(completed == total && submitted == total, "\(what): \(summary)")
        #expect(word(L.badIDs) == 0, "\(what): used ids naming no request in flight")
        #expect(word(L.duplicates) == 0, "\(what): requests completed twice")
        #expect(word(L.badStatus) == 0, "\(what): completions whose status was not VIRTIO_BLK_S_OK")
        #expect(word(L.badData) == 0, "\(what): completions whose data was not their sector's")
        let missing = missingRequests()
        #expect(missing.isEmpty, "\(what): \(missing.count) requests never completed, first \(missing.prefix(8))")
        #expect(device.counters.backendFailures == 0, "\(what): \(summary)")
    }
}

/// Live update of a virtio-blk device: the guest's VM and its device move to
/// a successor VM over the same RAM while the backend serves requests in
/// flight, and the backend never notices (no vhost-user message, the same
/// connection); completions the backend made while no VM listened reach the
/// guest once.
@Suite(needsKVM, .serialized) struct VirtioHandOffTests {
    static let qsdPresent = Testing.ConditionTrait.enabled(
        if: DiskBackendKind.qemuStorageDaemonPath != nil,
        "skipped: qemu-storage-daemon is not installed (apt-get install --no-install-recommends qemu-system-common)")
    static let embeddedBuilt = Testing.ConditionTrait.enabled(
        if: BlockBackend.embeddedExecutable() != nil, "skipped: the irqfd-vhost-user-blk executable is not built")
    /// Hand-offs per run (`IRQFD_VIRTIO_HANDOFFS`, default 20), one every `step` completions.
    static let handOffs = environmentCount("IRQFD_VIRTIO_HANDOFFS", default: 20)
    static let step = 100
    /// Requests in all: enough for every hand-off to find requests in flight,
    /// even when the test's thread runs late (the guest goes on meanwhile).
    static var requests: Int { (handOffs + 20) * 10 * step }

    static func environmentCount(_ name: String, default fallback: Int) -> Int {
        ProcessInfo.processInfo.environment[name].flatMap { Int($0) }.map { max($0, 1) } ?? fallback
    }

    @Test(Self.qsdPresent, arguments: InterruptDelivery.allCases)
    func qemuStorageDaemonServesEveryRequestOnceAcrossHandOffsWithoutAMessage(_ delivery: InterruptDelivery) throws {
        try handOffs(.qemuStorageDaemon, delivery)
    }

    @Test(Self.embeddedBuilt)
    func embeddedBackendServesEveryRequestOnceAcrossHandOffsWithoutAMessage() throws {
        try handOffs(.embedded, .irqfd)
    }

    func handOffs(_ kind: DiskBackendKind, _ delivery: InterruptDelivery) throws {
        let what = "virtio-blk hand-offs (\(kind), \(delivery))"
        let rig = try VirtioHandOffRig(kind: kind, delivery: delivery, total: Self.requests)
        let inode = rig.connectionInode
        let firstMapping = UInt64(UInt(bitPattern: rig.vm.memory.base))
        #expect(inode != nil)
        #expect(rig.backendConnections == 1, "\(what): one connection to the backend")
        var done = 0
        for _ in 0..<Self.handOffs {
            guard rig.waitForProgress(Self.step), rig.phase != 2 else { break }
            try rig.handOff()
            done += 1
            #expect(rig.connectionInode == inode, "\(what): the same connection after hand-off \(done)")
        }
        let finished = rig.vm.waitUntil(timeout: .seconds(120)) { rig.phase == 2 }
        print(
            "\(what): \(done) hand-offs, requests in flight at each freeze \(rig.inFlightAtFreeze), "
                + "vhost-user messages during hand-offs \(rig.messagesDuringHandOffs), "
                + "freeze \(VirtioHandOffRig.figures(rig.freezeTimes)), "
                + "resume \(VirtioHandOffRig.figures(rig.resumeTimes)), "
                + rig.summary)
        #expect(finished, "\(what): the guest stalled, a completion was lost: \(rig.summary)")
        #expect(done == Self.handOffs, "\(what): the guest finished before every hand-off")
        #expect(rig.inFlightAtFreeze.allSatisfy { $0 > 0 }, "\(what): requests in flight at every freeze")
        #expect(rig.messagesDuringHandOffs == 0, "\(what): the backend was sent nothing")
        #expect(rig.connectionInode == inode, "\(what): the same connection from first to last")
        #expect(rig.backendConnections == 1, "\(what): the backend saw no other connection")
        #expect(rig.device.reconnectCount == 0)
        #expect(rig.backend.isRunning)
        #expect(rig.device.counters.notifyExits == 0, "\(what): the successor's doorbells are bound to the kicks")
        guard finished else { return }
        rig.expectEveryRequestOnce(what)

        // The successor's own reset and restart run on the same connection:
        // GET_VRING_BASE, then SET_MEM_TABLE of the successor's mapping, each
        // region under the user address the backend knows it by.
        var driver = HostDriver(device: rig.device, memory: rig.vm.memory)
        let restarted = driver.initialise()
        #expect(restarted, "\(what): DRIVER_OK again after the hand-offs: \(rig.summary)")
        driver.submitReads(8)
        let used = { [driver] in driver.used }
        #expect(eventually(.seconds(10)) { used() == 8 }, "\(what): requests after the restart")
        for i in 0..<8 {
            #expect(rig.vm.memory.bytes(at: 0x10_0000 + 512 * UInt64(i), count: 512) == rig.image.filled(sector: i))
        }
        #expect(rig.device.frontend.memoryRegions.map(\.userAddress) == [firstMapping], "\(what): the table's names")
        #expect(UInt64(UInt(bitPattern: rig.vm.memory.base)) != firstMapping, "\(what): RAM mapped elsewhere")
        #expect(rig.device.resetCount == 1 && rig.device.reconnectCount == 0, "\(what): \(rig.summary)")
        #expect(rig.connectionInode == inode && rig.backendConnections == 1, "\(what): the same connection")
    }

    @Test func aStateTheSuccessorCannotTakeClosesTheDescriptorsItWasGiven() throws {
        let vm = try TinyVM()
        let wrongCount = Array(VirtioHandOffStateTests.versionOne.utf8)  // passes 5 descriptors, not 1
        for bytes in [Array("not a state".utf8), wrongCount] {
            // The write end of a pipe stands for a passed descriptor: once it is closed, the read end reads EOF.
            var ends: [Int32] = [-1, -1]
            #expect(pipe(&ends) == 0)
            defer { close(ends[0]) }
            // Open, the write end would make the read below wait: it reads EAGAIN instead.
            _ = fcntl(ends[0], F_SETFL, O_NONBLOCK)
            #expect(throws: VirtioHandOffError.self) {
                try VirtioBlkDevice.resume(
                    attachingTo: vm, encoded: bytes, descriptors: [FileDescriptor(rawValue: ends[1])])
            }
            var byte: UInt8 = 0
            #expect(read(ends[0], &byte, 1) == 0, "the descriptor given was closed")
        }
    }

    @Test(Self.qsdPresent, arguments: InterruptDelivery.allCases)
    func aThawedDeviceGoesOnAsBeforeWithoutAMessage(_ delivery: InterruptDelivery) throws {
        let what = "virtio-blk freeze and thaw (qemu-storage-daemon, \(delivery))"
        let rig = try VirtioHandOffRig(kind: .qemuStorageDaemon, delivery: delivery, total: 100 * Self.step)
        let inode = rig.connectionInode
        for _ in 0..<5 {
            guard rig.waitForProgress(Self.step), rig.phase != 2 else { break }
            let (_, sentBefore) = try rig.freeze()
            // The backend completes what was in flight meanwhile: its calls latch in the masked routes.
            usleep(20_000)
            try rig.device.thaw()
            rig.vm.resume()
            #expect(rig.device.frontend.messagesSent == sentBefore, "\(what): nothing sent")
        }
        let finished = rig.vm.waitUntil(timeout: .seconds(120)) { rig.phase == 2 }
        #expect(finished, "\(what): the guest stalled, a completion was lost: \(rig.summary)")
        #expect(rig.inFlightAtFreeze.count == 5 && rig.inFlightAtFreeze.allSatisfy { $0 > 0 })
        #expect(rig.connectionInode == inode)
        guard finished else { return }
        rig.expectEveryRequestOnce(what)
    }
}

extension VirtioNetTests {
    /// Live update of a virtio-net device on dpdk-testpmd (nested in
    /// `VirtioNetTests`, so that no other testpmd busy-polls meanwhile).
    @Suite struct HandOffTests {
        @Test
        func virtioNetOnTestpmdDeliversEveryFrameAcrossHandOffsWithoutAMessage() throws {
            typealias L = VirtioNetGuestLayout
            let what = "virtio-net hand-offs (testpmd, 2 pairs, control queue)"
            let backend = try NetBackend(queuePairs: 2)
            defer { backend.stop() }
            var vm = try TinyVM(.init(cpus: 2, coalescesCommits: false))
            var device = try VirtioNetDevice.attach(to: vm, socketPath: backend.socketPath, queuePairs: 2)
            defer { device.disconnect() }
            try vm.load(GuestProgram.virtioNet.image)
            let batch = 8
            let frames = batch * (VirtioHandOffTests.handOffs + 1)
            let m = vm.memory  // the same pages in every VM
            m.write32(UInt32(frames), at: L.frames)
            m.write32(2, at: L.pairs)
            m.write32(0, at: L.destination(pair: 0))
            m.write32(1, at: L.destination(pair: 1))
            m.write32(1, at: L.gated)
            m.write32(UInt32(batch), at: L.batch)
            vm.start()
            func intact(_ p: Int) -> Int { Int(m.read32(at: L.intact(pair: p))) }
            var messages = 0
            var inFlight: [Int] = []
            // DRIVER_OK, and the control request (VQ_PAIRS_SET, served by the VMM: it sends
            // SET_VRING_ENABLE) answered in the control queue's used ring (queue 4).
            let started = vm.waitUntil(timeout: .seconds(30)) {
                m.read32(at: L.phase) >= 1 && m.read32(at: L.usedRing(queue: 4)) >> 16 == 1
            }
            #expect(started, "\(what): DRIVER_OK and the control request served")
            // testpmd drops a frame sent before its link is up (TestpmdProcess.isLinkUp).
            #expect(backend.process.waitUntilLinkUp(), "\(what): testpmd's link")
            for step in 0..<VirtioHandOffTests.handOffs {
                // A batch goes out on each pair; the hand-off finds it in flight (or some of it back).
                m.write32(UInt32(batch * step + 1), at: L.gate)
                let moved = try VirtioHandOffRig.handOff(vm, device)
                inFlight.append(2 * batch * step + 2 * batch - intact(0) - intact(1))
                messages += moved.messages
                (vm, device) = (moved.vm, moved.device)
                let back = vm.waitUntil(timeout: .seconds(30)) {
                    intact(0) >= batch * (step + 1) && intact(1) >= batch * (step + 1)
                }
                #expect(back, "\(what): batch \(step) came back after its hand-off: \(intact(0)), \(intact(1))")
                guard back else { break }
            }
            m.write32(UInt32(frames + 1), at: L.gate)
            let outcome = vm.wait(timeout: .seconds(60))
            print(
                "\(what): frames not yet back as each hand-off ended \(inFlight), "
                    + "vhost-user messages during hand-offs \(messages)")
            #expect(
                outcome == .exited(code: 0), "\(what): \(outcome); device \(device.counters), status \(device.status)")
            #expect(m.read32(at: L.controlAck) == UInt32(VirtioNet.Control.ok), "\(what): VQ_PAIRS_SET served")
            #expect(intact(0) == frames && intact(1) == frames, "\(what): every frame back on each pair")
            #expect(m.read32(at: L.damaged) == 0)
            #expect(messages == 0, "\(what): the backend was sent nothing")
            #expect(device.reconnectCount == 0 && device.counters.backendFailures == 0)
        }
    }
}
#endif
