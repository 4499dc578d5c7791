#if os(Linux)
import CVhostUser
import Glibc
package import SystemPackage

/// How a channel operation failed, before the caller names the message.
package enum ChannelFailure: Error, Equatable {
    /// The deadline passed first.
    case timeout
    /// The peer closed the stream (end of file, EPIPE, ECONNRESET).
    case closed
    /// A system call failed.
    case system(String, Errno)

    /// The frontend's error for a failure during `request`.
    package func error(for request: VhostUserRequest?) -> VhostUserError {
        switch self {
        case .timeout: request.map { .timeout($0) } ?? .disconnected(nil)
        case .closed: .disconnected(request)
        case .system(let call, let errno): .systemCall(call: call, errno: errno)
        }
    }
}

/// A connected Unix stream socket that carries vhost-user messages, with
/// descriptors by SCM_RIGHTS, and never blocks past a deadline: every send and
/// receive is non-blocking with poll(2) between attempts. Owns its descriptor.
package final class VhostUserChannel: Sendable {
    /// The socket, closed in deinit.
    package let fd: Int32

    /// Takes ownership of a connected socket.
    package init(adopting fd: Int32) { self.fd = fd }

    deinit { Glibc.close(fd) }

    /// Connects to the socket listening at `path` (socket(2), connect(2)).
    /// The socket is non-blocking, so a back-end whose listen backlog is full
    /// (alive but not accepting) cannot hold the caller, often a vCPU
    /// reconnecting in a device reset: connect(2) then fails with EAGAIN and is
    /// retried until `deadline`, after which this throws ETIMEDOUT.
    package static func connect(to path: String, deadline: ContinuousClock.Instant = .now + .seconds(5)) throws(VhostUserError) -> VhostUserChannel {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .systemCall(call: "socket(AF_UNIX)", errno: Errno(rawValue: errno)) }
        let channel = VhostUserChannel(adopting: fd)
        while vhost_user_connect(fd, path) != 0 {
            if errno == EINTR { continue }
            if errno == EAGAIN, ContinuousClock.now < deadline {
                usleep(1000)
                continue
            }
            throw .systemCall(call: "connect(\(path))", errno: Errno(rawValue: errno == EAGAIN ? ETIMEDOUT : errno))
        }
        return channel
    }

    /// Waits with poll(2) until the socket is ready for `events` or the deadline passes.
    private func wait(for events: Int16, until deadline: ContinuousClock.Instant) throws(ChannelFailure) {
        while true {
            let remaining = deadline - .now
            guard remaining > .zero else { throw .timeout }
            let (seconds, attoseconds) = remaining.components
            // Round up so a sub-millisecond remainder still waits instead of spinning.
            let milliseconds = Int32(clamping: seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&entry, 1, milliseconds)
            if ready < 0 {
                if errno == EINTR { continue }
                throw .system("poll", Errno(rawValue: errno))
            }
            if ready > 0 { return }
        }
    }

    /// Sends all of `bytes`, the descriptors with the first byte (sendmsg(2), SCM_RIGHTS).
    package func send(_ bytes: [UInt8], descriptors: [Int32] = [], deadline: ContinuousClock.Instant) throws(ChannelFailure) {
        var offset = 0
        var pending = descriptors
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { buffer in
                pending.withUnsafeBufferPointer { fds in
                    vhost_user_sendmsg(fd, buffer.baseAddress! + offset, buffer.count - offset, fds.baseAddress, Int32(fds.count))
                }
            }
            if sent > 0 {
                offset += sent
                pending = []
                continue
            }
            switch errno {
            case EINTR: continue
            case EAGAIN: try wait(for: Int16(POLLOUT), until: deadline)
            case EPIPE, ECONNRESET: throw .closed
            default: throw .system("sendmsg", Errno(rawValue: errno))
            }
        }
    }

    /// Receives exactly `count` bytes (recvmsg(2)) and every descriptor that
    /// came with them: at most `maximumDescriptors` are kept (the rest closed),
    /// `received` is how many arrived in all.
    package func receive(exactly count: Int, maximumDescriptors: Int, deadline: ContinuousClock.Instant) throws(ChannelFailure) -> (bytes: [UInt8], descriptors: [Int32], received: Int) {
        var buffer = [UInt8](repeating: 0, count: count)
        var descriptors: [Int32] = []
        var received = 0
        var offset = 0
        var failure: ChannelFailure?
        while offset < count {
            var fds = [Int32](repeating: -1, count: Int(VHOST_USER_MAX_FDS) * 2)
            var nfds: Int32 = 0
            var truncated: Int32 = 0
            let got = buffer.withUnsafeMutableBytes { raw in
                vhost_user_recvmsg(fd, raw.baseAddress! + offset, count - offset, &fds, Int32(fds.count), &nfds, &truncated)
            }
            if got > 0 || nfds > 0 {
                for index in 0..<min(Int(nfds), fds.count) {
                    if descriptors.count < maximumDescriptors { descriptors.append(fds[index]) } else { Glibc.close(fds[index]) }
                }
                received += Int(nfds) + (truncated != 0 ? 1 : 0)
            }
            if got > 0 { offset += got; continue }
            if got == 0 { failure = .closed; break }
            if errno == EINTR { continue }
            if errno == EAGAIN {
                do throws(ChannelFailure) { try wait(for: Int16(POLLIN), until: deadline) } catch { failure = error; break }
                continue
            }
            failure = errno == ECONNRESET ? .closed : .system("recvmsg", Errno(rawValue: errno))
            break
        }
        if let failure {
            for descriptor in descriptors { Glibc.close(descriptor) }
            throw failure
        }
        return (buffer, descriptors, received)
    }
}
#endif
