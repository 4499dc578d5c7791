#if os(Linux)
import CBlkBackend
import Glibc
import VhostUser

/// A failure that ends the back-end (not one connection).
package struct ServerFailure: Error, CustomStringConvertible {
    package var description: String
}

/// One queue's state (vhost-user.rst, "Ring states").
package struct QueueState {
    package var size: UInt32 = 0
    package var descriptorUser: UInt64 = 0
    package var availableUser: UInt64 = 0
    package var usedUser: UInt64 = 0
    package var addressed = false
    package var lastAvailable: UInt16 = 0
    package var used: UInt16 = 0
    package var kick: Int32 = -1
    package var call: Int32 = -1
    package var enabled = false
    package var started = false

    mutating func closeFiles() {
        if kick >= 0 { close(kick) }
        if call >= 0 { close(call) }
        kick = -1
        call = -1
    }
}

/// The back-end's state: the image it serves and, per connection, the
/// negotiated features, the mapped guest memory and the queues. One thread
/// runs it (`AcceptLoop.swift`): one poll(2) loop over the connection and
/// every started, enabled queue's kick eventfd; messages are handled in
/// `Dispatch.swift`, rings walked in `VringWalk.swift`, requests served
/// synchronously with pread/pwrite in `BlockIO.swift`, so a ring's
/// completions are in order.
///
/// The front-end and the guest are untrusted: every message is size-checked,
/// a partial message must complete within 5 s, every descriptor chain is
/// validated against the mapped regions and the queue size, and a bad chain
/// completes with IOERR/UNSUPP (or length 0 when no status byte can be
/// found), never a crash.
package final class BlockServer {
    package let image: Int32
    package let sectors: UInt64
    package let readOnly: Bool
    package let queueCount: Int
    package let offeredFeatures: UInt64
    package let offeredProtocol =
        VhostUserProtocolFeature.multiQueue | VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.config

    // Per connection.
    package var features: UInt64 = 0
    package var protocolFeatures: UInt64 = 0
    package var regions: [MappedRegion] = []
    package var queues: [QueueState]
    /// Queues with requests left over from a round (their budget was spent) or newly started.
    var pending: Set<Int> = []
    /// SIGBUS faults contained when the current memory table was mapped.
    var faultsSeen: UInt64 = 0
    /// Lines a guest or front-end can trigger, rate-limited.
    var guestLog = RateLimitedLog()

    /// Test equipment only: how this back-end breaks the protocol on purpose
    /// (nil: it does not). The shipped executables never set it.
    package var hooks: (any BlockServerHooks)?

    package init(image path: String, readOnly: Bool, queues: Int) throws(ServerFailure) {
        image = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard image >= 0 else {
            throw ServerFailure(description: "open(\(path)): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard fstat(image, &info) == 0 else { throw ServerFailure(description: "fstat(\(path)) failed") }
        sectors = UInt64(info.st_size) / 512
        self.readOnly = readOnly
        queueCount = queues
        var offered = VhostUserFeature.version1 | VhostUserFeature.protocolFeatures
            | VhostUserFeature.blkSizeMax | VhostUserFeature.blkSegMax | VhostUserFeature.blkBlockSize
            | VhostUserFeature.blkFlush
        if readOnly { offered |= VhostUserFeature.blkReadOnly }
        if queues > 1 { offered |= VhostUserFeature.blkMultiQueue }
        offeredFeatures = offered
        self.queues = Array(repeating: QueueState(), count: queues)
    }

    deinit {
        reset()
        close(image)
    }

    /// The largest data segment a request may carry (size_max in the config).
    package static let sizeMax: UInt32 = 1 << 20
    /// The most data segments a request may carry (seg_max in the config).
    package static let segMax: UInt32 = 126

    /// struct virtio_blk_config (virtio 1.2 section 5.2.4), 60 bytes.
    var config: [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLE(sectors)  // capacity
        bytes.appendLE(Self.sizeMax)  // size_max
        bytes.appendLE(Self.segMax)  // seg_max
        bytes += [0, 0, 0, 0]  // geometry
        bytes.appendLE(UInt32(512))  // blk_size
        bytes += [UInt8](repeating: 0, count: 10)  // topology, writeback, unused0
        bytes.appendLE(UInt16(queueCount))  // num_queues
        bytes += [UInt8](repeating: 0, count: 60 - bytes.count)
        return bytes
    }

    /// One line on standard error.
    package func log(_ message: String) {
        let line = Array("irqfd-vhost-user-blk: \(message)\n".utf8)
        _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }

    /// Back to the state before any front-end: rings stopped, memory unmapped.
    func reset() {
        for index in queues.indices { queues[index].closeFiles() }
        queues = Array(repeating: QueueState(), count: queueCount)
        unmapRegions()
        pending = []
        faultsSeen = blk_guard_faults()
        features = 0
        protocolFeatures = 0
    }
}
#endif
