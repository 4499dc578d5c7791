#if os(Linux)
import Foundation
import Glibc
import Testing
import VhostUser

/// Whether qemu-storage-daemon is installed (tests against it skip otherwise).
let qemuStorageDaemonPresent = VhostUserBackendProcess.qemuStorageDaemonPath() != nil

/// A raw image made by the test, a back-end serving it, a connected frontend
/// after the handshake, and memfd guest RAM registered with SET_MEM_TABLE.
final class BlockFixture {
    static let sectors: UInt64 = 2048
    let directory: String
    let image: String
    let backend: VhostUserBackendProcess
    let frontend: VhostUserFrontend
    let memory: MemfdGuestMemory
    let features: UInt64

    init(_ kind: VhostUserBackendProcess.Kind, queues: Int = 1) throws {
        directory = NSTemporaryDirectory() + "irqfd-vhost-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        image = directory + "/disk.img"
        // Sector s holds bytes (s + i) & 0xFF: reads are checkable.
        // The pattern repeats every 256 sectors.
        let period = (0..<256).flatMap { expectedSector($0) }
        let bytes = Array((0..<Int(Self.sectors) / 256).map { _ in period }.joined())
        _ = FileManager.default.createFile(atPath: image, contents: Data(bytes))
        backend = try VhostUserBackendProcess.start(
            kind, image: image, socketPath: directory + "/blk.sock", queues: queues)
        frontend = try VhostUserFrontend(socketPath: backend.socketPath)
        features = try frontend.handshake(
            wantedProtocolFeatures: VhostUserProtocolFeature.multiQueue | VhostUserProtocolFeature.replyAck
                | VhostUserProtocolFeature.config)
        let accepted =
            VhostUserFeature.version1 | VhostUserFeature.protocolFeatures | (features & VhostUserFeature.blkFlush)
        try frontend.setFeatures(accepted)
        memory = try MemfdGuestMemory(size: 4 << 20)
        try frontend.setMemTable([memory.region])
    }

    func queue(_ index: UInt32, size: UInt16 = 64) throws -> HostVirtqueueDriver {
        let driver = try HostVirtqueueDriver(memory: memory, queue: index, size: size, base: UInt64(index) << 20)
        try driver.start(frontend)
        return driver
    }

    func imageBytes(sector: UInt64, count: Int) throws -> [UInt8] {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: image))
        defer { try? handle.close() }
        try handle.seek(toOffset: sector * 512)
        return [UInt8](try handle.read(upToCount: count) ?? Data())
    }

    deinit {
        frontend.close()
        backend.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

func expectedSector(_ s: Int) -> [UInt8] { (0..<512).map { UInt8((s + $0) & 0xFF) } }

/// The scenarios, run against each back-end by the suites below.
enum Scenarios {
    static func handshakeNegotiatesFeaturesAndReadsCapacity(kind: VhostUserBackendProcess.Kind) throws {
        let fixture = try BlockFixture(kind)
        let frontend = fixture.frontend
        #expect(fixture.features & VhostUserFeature.version1 != 0)
        #expect(fixture.features & VhostUserFeature.protocolFeatures != 0)
        let wanted =
            VhostUserProtocolFeature.multiQueue | VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.config
        #expect(frontend.protocolFeatures == wanted)
        let config = try frontend.getConfig(offset: 0, size: 60)
        #expect(config.count == 60)
        let capacity = (0..<8).reduce(UInt64(0)) { $0 | UInt64(config[$1]) << (8 * UInt64($1)) }
        #expect(capacity == BlockFixture.sectors)
        #expect(try frontend.getQueueNum() >= 1)
        // REPLY_ACK: a message with no reply of its own is acknowledged, and an ack is not a message sent.
        let before = frontend.messagesSent
        try frontend.setVringNum(queue: 0, size: 64)
        #expect(frontend.messagesSent == before + 1)
        // Asking for a feature the back-end did not offer never reaches it.
        #expect(throws: VhostUserError.self) { try frontend.setFeatures(VhostUserFeature.ringPacked) }
        #expect(frontend.messagesSent == before + 1)
    }

    static func readsAndWritesSectors(kind: VhostUserBackendProcess.Kind) throws {
        let fixture = try BlockFixture(kind)
        let queue = try fixture.queue(0)
        queue.submit(.read, sector: 7, length: 1024, slot: 0)
        queue.kick.signal()
        let read = queue.collect(1)
        #expect(read.count == 1 && read.first?.head == 0)
        #expect(read.first?.length == 1025)
        #expect(queue.status(slot: 0) == 0)
        #expect(fixture.memory.read(1024, at: queue.dataAddress(slot: 0)) == expectedSector(7) + expectedSector(8))

        let pattern = (0..<512).map { UInt8(($0 * 7 + 3) & 0xFF) }
        queue.submit(.write, sector: 100, length: 512, data: pattern, slot: 1)
        queue.submit(.flush, sector: 0, length: 0, slot: 2)
        queue.kick.signal()
        let written = queue.collect(2)
        #expect(written.count == 2)
        #expect(queue.status(slot: 1) == 0 && queue.status(slot: 2) == 0)
        #expect(try fixture.imageBytes(sector: 100, count: 512) == pattern)
        #expect(try fixture.imageBytes(sector: 101, count: 512) == expectedSector(101))
        // Out of range: IOERR, the ring goes on.
        queue.submit(.read, sector: BlockFixture.sectors, length: 512, slot: 3)
        queue.kick.signal()
        #expect(queue.collect(1).count == 1)
        #expect(queue.status(slot: 3) == 1)
    }

    static func twoQueues(kind: VhostUserBackendProcess.Kind) throws {
        let fixture = try BlockFixture(kind, queues: 2)
        #expect(try fixture.frontend.getQueueNum() >= 2)
        let queues = try [fixture.queue(0), fixture.queue(1)]
        for (index, queue) in queues.enumerated() {
            for slot in 0..<4 { queue.submit(.read, sector: UInt64(index * 10 + slot), length: 512, slot: slot) }
            queue.kick.signal()
        }
        for (index, queue) in queues.enumerated() {
            #expect(queue.collect(4).count == 4)
            for slot in 0..<4 {
                #expect(queue.status(slot: slot) == 0)
                #expect(
                    fixture.memory.read(512, at: queue.dataAddress(slot: slot)) == expectedSector(index * 10 + slot))
            }
        }
    }

    static func getVringBaseStopsAndTheRingRestartsFromIt(kind: VhostUserBackendProcess.Kind) throws {
        let fixture = try BlockFixture(kind)
        let queue = try fixture.queue(0)
        for slot in 0..<3 { queue.submit(.read, sector: UInt64(slot), length: 512, slot: slot) }
        queue.kick.signal()
        #expect(queue.collect(3).count == 3)
        let base = try fixture.frontend.getVringBase(queue: 0)
        #expect(base == 3)
        // Stopped: a request published now is not served until the restart.
        queue.submit(.read, sector: 40, length: 512, slot: 4)
        queue.kick.signal()
        #expect(queue.collect(1, timeout: .milliseconds(300)).isEmpty)
        try queue.start(fixture.frontend, base: UInt16(base))
        // The restarted ring re-reads from its base: slot 4's request (published at index 3) is served.
        queue.kick.signal()
        #expect(queue.collect(1).count == 1)
        #expect(queue.status(slot: 4) == 0)
        #expect(fixture.memory.read(512, at: queue.dataAddress(slot: 4)) == expectedSector(40))
    }
}

extension Scenarios {
    /// 200 one-sector reads, one in flight: every one completes with status 0
    /// and the right bytes; prints the median round trip (kick to used, through
    /// the call eventfd). Timing is printed, not asserted: this machine is shared.
    static func sequentialReadsRoundTrip(kind: VhostUserBackendProcess.Kind) throws {
        let fixture = try BlockFixture(kind)
        let queue = try fixture.queue(0)
        var times: [Duration] = []
        for round in 0..<200 {
            let slot = round % 21
            let start = ContinuousClock.now
            queue.submit(.read, sector: UInt64(round), length: 512, slot: slot)
            queue.kick.signal()
            let done = queue.collect(1)
            times.append(ContinuousClock.now - start)
            #expect(done.count == 1 && queue.status(slot: slot) == 0)
            #expect(fixture.memory.read(512, at: queue.dataAddress(slot: slot)) == expectedSector(round))
        }
        times.sort()
        print(
            "vhost-user \(kind.rawValue): 200 sequential 512-byte reads, median round trip \(times[100]), p90 \(times[180])"
        )
    }
}

/// The back-ends the scenarios run against: always the embedded one
/// (`irqfd-vhost-user-blk`, built with the tests), and qemu-storage-daemon, the
/// third-party one, when it is installed (apt-get install --no-install-recommends
/// qemu-system-common).
let backendKinds: [VhostUserBackendProcess.Kind] = [.embedded] + (qemuStorageDaemonPresent ? [.qemuStorageDaemon] : [])

@Suite struct BackendScenarioTests {
    /// Says, when qemu-storage-daemon is missing, that its cases were not
    /// generated; when it is installed, that they were.
    @Test(
        .enabled(
            if: qemuStorageDaemonPresent,
            "skipped: qemu-storage-daemon is not installed (apt-get install --no-install-recommends qemu-system-common)"
        ))
    func theScenariosRunAgainstQemuStorageDaemon() {
        #expect(backendKinds.contains(.qemuStorageDaemon))
    }

    @Test(arguments: backendKinds) func handshakeNegotiatesFeaturesAndReadsCapacity(kind: VhostUserBackendProcess.Kind)
        throws
    {
        try Scenarios.handshakeNegotiatesFeaturesAndReadsCapacity(kind: kind)
    }
    @Test(arguments: backendKinds) func readsAndWritesSectors(kind: VhostUserBackendProcess.Kind) throws {
        try Scenarios.readsAndWritesSectors(kind: kind)
    }
    @Test(arguments: backendKinds) func twoQueues(kind: VhostUserBackendProcess.Kind) throws {
        try Scenarios.twoQueues(kind: kind)
    }
    @Test(arguments: backendKinds) func getVringBaseStopsAndTheRingRestartsFromIt(kind: VhostUserBackendProcess.Kind)
        throws
    {
        try Scenarios.getVringBaseStopsAndTheRingRestartsFromIt(kind: kind)
    }
    @Test(arguments: backendKinds) func sequentialReadsRoundTrip(kind: VhostUserBackendProcess.Kind) throws {
        try Scenarios.sequentialReadsRoundTrip(kind: kind)
    }
}
#endif
