#if os(Linux)
import CBlkBackend
import Glibc
import IrqFdCore
package import IrqFdLinux
package import SystemPackage
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
    /// The kick and call eventfds (SET_VRING_KICK, SET_VRING_CALL), owned: released, they are closed.
    package var kick: EventFD?
    package var call: EventFD?
    package var enabled = false
    package var started = false

    mutating func closeFiles() {
        kick = nil
        call = nil
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
    /// The image file, owned.
    package let image: FileDescriptor
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
        let flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        var info = stat()
        let descriptor: FileDescriptor
        do throws(SystemCallError) {
            descriptor = FileDescriptor(rawValue: try retryingInterrupts("open(\(path))") { open(path, flags) })
            do throws(SystemCallError) {
                _ = try retryingInterrupts("fstat(\(path))") { fstat(descriptor.rawValue, &info) }
            } catch {
                try? descriptor.close()
                throw error
            }
        } catch {
            throw ServerFailure(description: error.description)
        }
        image = descriptor
        sectors = UInt64(info.st_size) / 512
        self.readOnly = readOnly
        queueCount = queues
        var offered =
            VhostUserFeature.version1 | VhostUserFeature.protocolFeatures
            | VhostUserFeature.blkSizeMax | VhostUserFeature.blkSegMax | VhostUserFeature.blkBlockSize
            | VhostUserFeature.blkFlush
        if readOnly { offered |= VhostUserFeature.blkReadOnly }
        if queues > 1 { offered |= VhostUserFeature.blkMultiQueue }
        offeredFeatures = offered
        self.queues = Array(repeating: QueueState(), count: queues)
    }

    deinit {
        reset()
        // A close(2) error would be a deferred write error: the guest learns of those from
        // FLUSH (fsync(2)), and at this point there is nobody left to tell.
        try? image.close()
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
    package func log(_ message: String) { writeLogLine(message) }

    /// Back to the state before any front-end: rings stopped, memory unmapped.
    func reset() {
        queues = Array(repeating: QueueState(), count: queueCount)
        regions = []
        pending = []
        faultsSeen = blk_guard_faults()
        features = 0
        protocolFeatures = 0
    }
}
#endif
