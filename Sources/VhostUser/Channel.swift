#if os(Linux)
import IrqFdCore
package import IrqFdLinux
package import SystemPackage

/// How a channel operation failed, before the caller names the message.
package enum ChannelFailure: Error, Equatable {
    /// The deadline passed first.
    case timeout
    /// The peer closed the stream (end of file, EPIPE, ECONNRESET).
    case closed
    /// A system call failed.
    case system(String, Errno)

    /// The channel failure for a socket failure.
    init(_ failure: UnixSocket.Failure) {
        switch failure {
        case .timeout: self = .timeout
        case .closed: self = .closed
        case .systemCall(let error): self = .system(error.call, error.errno)
        }
    }

    /// The frontend's error for a failure during `request`.
    package func error(for request: VhostUserRequest?) -> VhostUserError {
        switch self {
        case .timeout: request.map { .timeout($0) } ?? .disconnected(nil)
        case .closed: .disconnected(request)
        case .system(let call, let errno): .systemCall(call: call, errno: errno)
        }
    }
}

/// The vhost-user connection (vhost-user.rst, "Communication"): a Unix stream
/// socket that carries messages, with descriptors by SCM_RIGHTS, and never
/// blocks past a deadline. The socket work is IrqFdLinux's `UnixSocket`
/// (its deadline calls); this type gives its failures the protocol's meaning.
/// Owns the socket.
package final class VhostUserChannel: Sendable {
    /// The connected socket, closed when this channel is released.
    package let socket: UnixSocket

    /// Takes ownership of a connected socket.
    package init(_ socket: UnixSocket) { self.socket = socket }

    /// Connects to the socket listening at `path` (socket(2), connect(2),
    /// non-blocking): a back-end whose listen backlog is full (alive but not
    /// accepting) cannot hold the caller, often a vCPU reconnecting in a device
    /// reset; after `deadline` this throws ETIMEDOUT.
    package static func connect(
        to path: String, deadline: ContinuousClock.Instant = .now + .seconds(5)
    ) throws(VhostUserError) -> VhostUserChannel {
        do throws(SystemCallError) {
            return VhostUserChannel(try UnixSocket.connect(to: path, deadline: deadline))
        } catch {
            throw .systemCall(call: error.call, errno: error.errno)
        }
    }

    /// Sends all of `bytes`, `descriptors` (borrowed) with the first byte
    /// (sendmsg(2), SCM_RIGHTS), within `deadline`.
    package func send(
        _ bytes: [UInt8], passing descriptors: [FileDescriptor] = [], deadline: ContinuousClock.Instant
    ) throws(ChannelFailure) {
        do throws(UnixSocket.Failure) {
            try socket.send(bytes, descriptors: descriptors, deadline: deadline)
        } catch {
            throw ChannelFailure(error)
        }
    }

    /// Receives exactly `count` bytes (recvmsg(2)) within `deadline`, and every
    /// descriptor that came with them: at most `maximumDescriptors` are kept
    /// (now the caller's), the rest closed; `received` counts all that arrived.
    package func receiveMessage(
        exactly count: Int, maximumDescriptors: Int, deadline: ContinuousClock.Instant
    ) throws(ChannelFailure) -> UnixSocket.Message {
        do throws(UnixSocket.Failure) {
            return try socket.receive(exactly: count, maximumDescriptors: maximumDescriptors, deadline: deadline)
        } catch {
            throw ChannelFailure(error)
        }
    }
}
#endif
