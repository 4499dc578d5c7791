#if os(Linux)
import Foundation
import Glibc
import Testing
import VhostUser

/// Whether `swift build` made the embedded back-end and its misbehaving twin (the hostile tests run them).
let embeddedBuilt = Testing.ConditionTrait.enabled(
    if: VhostUserBackendProcess.embeddedPath() != nil && HostileBackend.hostileExecutable() != nil,
    "skipped: irqfd-vhost-user-blk or irqfd-vhost-user-blk-hostile was not built (swift build)")

/// A raw image, and the embedded back-end serving it: with a mode, the test
/// equipment `irqfd-vhost-user-blk-hostile --misbehave MODE --misbehave-on MESSAGE`
/// (the embedded back-end with a misbehaviour installed); with none, the shipped
/// `irqfd-vhost-user-blk`. Both live in a private directory removed at deinit.
final class HostileBackend {
    static let sectors = 2048
    let directory: String
    let image: String
    let socketPath: String
    private let process: Process

    /// Sector s holds bytes (s + i) & 0xFF: reads are checkable.
    static func sector(_ s: Int) -> [UInt8] { (0..<512).map { UInt8((s + $0) & 0xFF) } }

    init(_ mode: String?, on message: VhostUserRequest = .getFeatures, image existing: String? = nil) throws {
        directory = NSTemporaryDirectory() + "irqfd-hostile-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if let existing {
            image = existing
        } else {
            image = directory + "/disk.img"
            let bytes = (0..<Self.sectors).flatMap { Self.sector($0) }
            guard FileManager.default.createFile(atPath: image, contents: Data(bytes)) else {
                throw TestFailureReason("cannot create \(image)")
            }
        }
        socketPath = directory + "/blk.sock"
        guard let executable = mode == nil ? VhostUserBackendProcess.embeddedPath() : Self.hostileExecutable() else {
            throw TestFailureReason("irqfd-vhost-user-blk or irqfd-vhost-user-blk-hostile is not built")
        }
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments =
            [image, "--socket", socketPath] + (mode.map { ["--misbehave", $0, "--misbehave-on", message.name] } ?? [])
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            var info = stat()
            if stat(socketPath, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK { return }
            guard process.isRunning else {
                throw TestFailureReason("irqfd-vhost-user-blk exited (\(process.terminationStatus)) before listening")
            }
            guard ContinuousClock.now < deadline else {
                throw TestFailureReason("irqfd-vhost-user-blk did not listen within 20 s")
            }
            usleep(10_000)
        }
    }

    /// The test-only `irqfd-vhost-user-blk-hostile`, built beside the standalone back-end.
    static func hostileExecutable() -> String? {
        guard let standalone = VhostUserBackendProcess.embeddedPath() else { return nil }
        let candidate = standalone + "-hostile"
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }

    /// Whether the back-end process still runs (a misbehaving one is not meant to die).
    var isRunning: Bool { process.isRunning }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    func imageSector(_ s: Int) throws -> [UInt8] {
        let data = try Data(contentsOf: URL(fileURLWithPath: image))
        return [UInt8](data[(s * 512)..<(s * 512 + 512)])
    }
}

struct TestFailureReason: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A vhost-user session from the handshake to a served request and a stopped
/// ring, in the order a VMM sends it. Each step names its message, so a
/// misbehaving back-end's first refusal is at the message it broke.
struct HostSession {
    let frontend: VhostUserFrontend
    let memory: MemfdGuestMemory

    static let wantedProtocol =
        VhostUserProtocolFeature.multiQueue | VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.config

    /// Runs the whole session; returns the driver whose one read (sector 5) was served.
    @discardableResult
    func run() throws -> HostVirtqueueDriver {
        let features = try frontend.getFeatures()  // GET_FEATURES
        let offered = try frontend.getProtocolFeatures()  // GET_PROTOCOL_FEATURES
        try frontend.setProtocolFeatures(Self.wantedProtocol & offered)  // SET_PROTOCOL_FEATURES (no ack yet)
        try frontend.setOwner()  // SET_OWNER, acknowledged from here on
        _ = try frontend.getQueueNum()  // GET_QUEUE_NUM
        _ = try frontend.getConfig(offset: 0, size: 60)  // GET_CONFIG
        try frontend.setFeatures(VhostUserFeature.version1 | (features & VhostUserFeature.protocolFeatures))
        try frontend.setMemTable([memory.region])  // SET_MEM_TABLE
        // A driver zeroes its rings: the memory may hold an earlier session's (or a back-end's garbage).
        memory.write([UInt8](repeating: 0, count: Int(HostVirtqueueDriver.footprint(size: 64, maxData: 4096))), at: 0)
        let queue = try HostVirtqueueDriver(memory: memory, queue: 0, size: 64, base: 0)
        try queue.start(frontend)  // NUM, ADDR, BASE, CALL, KICK, ENABLE
        queue.submit(.read, sector: 5, length: 512, slot: 0)
        queue.kick.signal()
        let done = try queue.collectValidated(1)
        guard done.count == 1, queue.status(slot: 0) == 0,
            memory.read(512, at: queue.dataAddress(slot: 0)) == HostileBackend.sector(5)
        else {
            throw TestFailureReason("the read of sector 5 was not served: \(done), status \(queue.status(slot: 0))")
        }
        _ = try frontend.getVringBase(queue: 0)  // GET_VRING_BASE
        return queue
    }
}
#endif
