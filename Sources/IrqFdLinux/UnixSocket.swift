#if os(Linux)
import CLinuxKVM
import Glibc
public import IrqFdCore
public import SystemPackage

/// A connected or listening Unix stream socket that can carry file
/// descriptors (SCM_RIGHTS): how a VMM hands a route's eventfd to a device in
/// another process (vhost-user, a VFIO helper), which then signals it with no
/// VMM code on the interrupt path.
///
/// Two ways to use it: blocking calls (`send`, `receive`), for a peer that is
/// trusted to answer; and calls with a deadline (``send(_:descriptors:deadline:)``,
/// ``receive(exactly:maximumDescriptors:deadline:)``), which never wait past
/// it, for a peer that is not (a vhost-user backend): each attempt is
/// non-blocking (MSG_DONTWAIT) with poll(2) between attempts.
///
/// This object owns its descriptor and closes it when released.
public final class UnixSocket: Sendable {
    /// The socket, owned by this object.
    public let fileDescriptor: FileDescriptor
    /// The path a listening socket is bound to (removed again when it is released).
    public let boundPath: String?

    /// Takes ownership of a Unix stream socket (one accepted elsewhere, or received).
    public init(adopting descriptor: FileDescriptor) {
        fileDescriptor = descriptor
        boundPath = nil
    }

    private init(_ descriptor: FileDescriptor, boundPath: String?) {
        fileDescriptor = descriptor
        self.boundPath = boundPath
    }

    deinit {
        try? fileDescriptor.close()
        if let boundPath { unlink(boundPath) }
    }

    /// Why a call with a deadline failed.
    public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
        /// The deadline passed first.
        case timeout
        /// The peer closed the stream (end of file, EPIPE, ECONNRESET).
        case closed
        /// A system call failed.
        case systemCall(SystemCallError)

        /// What failed.
        public var description: String {
            switch self {
            case .timeout: "the deadline passed"
            case .closed: "the peer closed the connection"
            case .systemCall(let error): error.description
            }
        }
    }

    /// A message received with ``receive(exactly:maximumDescriptors:deadline:)``.
    public struct Message: Sendable {
        /// The bytes.
        public var bytes: [UInt8]
        /// The descriptors kept (at most the maximum asked for), now the caller's to close.
        public var descriptors: [FileDescriptor]
        /// How many descriptors arrived in all, counting those closed because
        /// they were over the maximum or dropped by the kernel (MSG_CTRUNC):
        /// more than were asked for is the peer's protocol error.
        public var received: Int
    }

    private static func makeSocket(nonBlocking: Bool) throws(SystemCallError) -> FileDescriptor {
        let type =
            Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        return FileDescriptor(rawValue: try retryingInterrupts("socket(AF_UNIX)") { socket(AF_UNIX, type, 0) })
    }

    /// A socket listening at `path` (socket(2), bind(2), listen(2)); a stale
    /// socket file at `path` is replaced.
    ///
    /// The socket is bound and listening under a temporary name beside `path`
    /// before rename(2) puts it into place, so a peer that waits for the path
    /// to appear can connect at once: between bind(2) and listen(2) a connect
    /// is refused (ECONNREFUSED). A `path` so long that the temporary name does
    /// not fit a socket address (ENAMETOOLONG) is bound directly.
    public static func listen(at path: String, backlog: Int32 = 1) throws(IrqFdError) -> UnixSocket {
        do throws(SystemCallError) {
            let descriptor = try makeSocket(nonBlocking: false)
            var bound = path + ".\(getpid()).tmp"
            do throws(SystemCallError) {
                unlink(bound)
                do throws(SystemCallError) {
                    _ = try retryingInterrupts("bind(\(bound))") { irqfd_unix_bind(descriptor.rawValue, bound) }
                } catch  where error.errno == .fileNameTooLong {
                    bound = path
                    unlink(path)
                    _ = try retryingInterrupts("bind(\(path))") { irqfd_unix_bind(descriptor.rawValue, path) }
                }
                _ = try retryingInterrupts("listen") { Glibc.listen(descriptor.rawValue, backlog) }
                if bound != path {
                    _ = try retryingInterrupts("rename(\(bound), \(path))") { rename(bound, path) }
                }
            } catch {
                unlink(bound)
                try? descriptor.close()
                throw error
            }
            return UnixSocket(descriptor, boundPath: path)
        } catch {
            throw .systemCall(error)
        }
    }

    /// A socket connected to the one listening at `path` (connect(2), blocking).
    public static func connect(to path: String) throws(IrqFdError) -> UnixSocket {
        do throws(SystemCallError) {
            let socket = UnixSocket(adopting: try makeSocket(nonBlocking: false))
            _ = try retryingInterrupts("connect(\(path))") { irqfd_unix_connect(socket.fileDescriptor.rawValue, path) }
            return socket
        } catch {
            throw .systemCall(error)
        }
    }

    /// A non-blocking socket connected to the one listening at `path`
    /// (socket(2) with SOCK_NONBLOCK, connect(2)). A listener whose backlog is
    /// full (alive but not accepting) cannot hold the caller: connect(2) then
    /// fails with EAGAIN and is retried every millisecond until `deadline`,
    /// after which this throws ETIMEDOUT.
    public static func connect(
        to path: String, deadline: ContinuousClock.Instant
    ) throws(SystemCallError) -> UnixSocket {
        let socket = UnixSocket(adopting: try makeSocket(nonBlocking: true))
        while try retryingInterruptsUnlessWouldBlock(
            "connect(\(path))",
            {
                irqfd_unix_connect(socket.fileDescriptor.rawValue, path)
            }) == nil
        {
            guard ContinuousClock.now < deadline else {
                throw SystemCallError(call: "connect(\(path))", errno: .timedOut)
            }
            usleep(1000)
        }
        return socket
    }

    /// The next connection to a listening socket (accept4(2), SOCK_CLOEXEC).
    public func accept() throws(IrqFdError) -> UnixSocket {
        do throws(SystemCallError) {
            return UnixSocket(
                adopting: FileDescriptor(
                    rawValue: try retryingInterrupts("accept4") { irqfd_accept_cloexec(fileDescriptor.rawValue) }))
        } catch {
            throw .systemCall(error)
        }
    }

    /// Sends `bytes` (at least one) with `descriptor` (borrowed) attached
    /// (sendmsg(2), SCM_RIGHTS). The receiver gets its own descriptor for the same file.
    public func send(_ bytes: [UInt8], passing descriptor: FileDescriptor) throws(IrqFdError) {
        precondition(!bytes.isEmpty, "a descriptor travels with at least one byte")
        var fd = descriptor.rawValue
        do throws(SystemCallError) {
            let sent = try retryingInterrupts("sendmsg(SCM_RIGHTS)") {
                bytes.withUnsafeBytes {
                    irqfd_sendmsg_fds(fileDescriptor.rawValue, $0.baseAddress, $0.count, &fd, 1, 0)
                }
            }
            guard sent == bytes.count else {
                throw SystemCallError(call: "sendmsg(SCM_RIGHTS)", errno: .messageTooLong)
            }
        } catch {
            throw .systemCall(error)
        }
    }

    /// Receives up to `maximum` bytes and the descriptor sent with them, if any
    /// (recvmsg(2), blocking). The caller owns the descriptor; any further
    /// descriptors that came along are closed. No bytes means the peer closed.
    public func receiveWithDescriptor(
        maximum: Int = 256
    ) throws(IrqFdError) -> (bytes: [UInt8], descriptor: FileDescriptor?) {
        var buffer = [UInt8](repeating: 0, count: maximum)
        var fd: Int32 = -1
        var count: Int32 = 0
        var truncated: Int32 = 0
        do throws(SystemCallError) {
            let got = try retryingInterrupts("recvmsg") {
                buffer.withUnsafeMutableBytes {
                    irqfd_recvmsg_fds(fileDescriptor.rawValue, $0.baseAddress, $0.count, &fd, 1, &count, &truncated, 0)
                }
            }
            return (Array(buffer[..<got]), count > 0 ? FileDescriptor(rawValue: fd) : nil)
        } catch {
            throw .systemCall(error)
        }
    }

    /// Sends all of `bytes` (send(2), blocking, MSG_NOSIGNAL).
    public func send(_ bytes: [UInt8]) throws(IrqFdError) {
        var offset = 0
        do throws(SystemCallError) {
            while offset < bytes.count {
                offset += try retryingInterrupts("send") {
                    bytes[offset...].withUnsafeBytes {
                        Glibc.send(fileDescriptor.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                    }
                }
            }
        } catch {
            throw .systemCall(error)
        }
    }

    /// Receives up to `maximum` bytes (recv(2), blocking); empty when the peer closed.
    public func receive(maximum: Int = 256) throws(IrqFdError) -> [UInt8] {
        let (bytes, descriptor) = try receiveWithDescriptor(maximum: maximum)
        // Nobody asked for a descriptor here: do not leak one that came anyway.
        try? descriptor?.close()
        return bytes
    }

    /// Sends all of `bytes`, `descriptors` (borrowed, at most 8) attached to
    /// the first byte as SCM_RIGHTS (sendmsg(2), MSG_DONTWAIT, MSG_NOSIGNAL),
    /// waiting (poll(2)) while the socket is full, never past `deadline`.
    public func send(
        _ bytes: [UInt8], descriptors: [FileDescriptor] = [], deadline: ContinuousClock.Instant
    ) throws(Failure) {
        var offset = 0
        var pending = descriptors.map(\.rawValue)
        while offset < bytes.count {
            let sent: Int?
            do throws(SystemCallError) {
                sent = try retryingInterruptsUnlessWouldBlock("sendmsg") {
                    bytes.withUnsafeBytes { buffer in
                        pending.withUnsafeBufferPointer { fds in
                            irqfd_sendmsg_fds(
                                fileDescriptor.rawValue, buffer.baseAddress! + offset, buffer.count - offset,
                                fds.baseAddress, Int32(fds.count), Int32(MSG_DONTWAIT))
                        }
                    }
                }
            } catch {
                if error.errno == .brokenPipe || error.errno == .connectionReset { throw .closed }
                throw .systemCall(error)
            }
            guard let sent else {
                try wait(for: .writable, until: deadline)
                continue
            }
            offset += sent
            pending = []
        }
    }

    /// Receives exactly `count` bytes (recvmsg(2), MSG_DONTWAIT, descriptors
    /// close-on-exec), waiting (poll(2)) for more, never past `deadline`; and
    /// every descriptor that came with them: at most `maximumDescriptors` are
    /// kept (the rest closed). On failure every kept descriptor is closed.
    public func receive(
        exactly count: Int, maximumDescriptors: Int, deadline: ContinuousClock.Instant
    ) throws(Failure) -> Message {
        var buffer = [UInt8](repeating: 0, count: count)
        var descriptors: [FileDescriptor] = []
        var received = 0
        var offset = 0
        var failure: Failure?
        while offset < count {
            var fds = [Int32](repeating: -1, count: Int(IRQFD_MAX_PASSED_FDS) * 2)
            var passed: Int32 = 0
            var truncated: Int32 = 0
            let got: Int?
            do throws(SystemCallError) {
                got = try retryingInterruptsUnlessWouldBlock("recvmsg") {
                    buffer.withUnsafeMutableBytes { raw in
                        irqfd_recvmsg_fds(
                            fileDescriptor.rawValue, raw.baseAddress! + offset, count - offset, &fds,
                            Int32(fds.count), &passed, &truncated, Int32(MSG_DONTWAIT))
                    }
                }
            } catch {
                failure = error.errno == .connectionReset ? .closed : .systemCall(error)
                break
            }
            for index in 0..<min(Int(passed), fds.count) {
                let descriptor = FileDescriptor(rawValue: fds[index])
                if descriptors.count < maximumDescriptors {
                    descriptors.append(descriptor)
                } else {
                    try? descriptor.close()  // over the maximum: counted in `received`, not kept
                }
            }
            received += Int(passed) + (truncated != 0 ? 1 : 0)
            guard let got else {
                do throws(Failure) { try wait(for: .readable, until: deadline) } catch {
                    failure = error
                    break
                }
                continue
            }
            if got == 0 {
                failure = .closed
                break
            }
            offset += got
        }
        if let failure {
            for descriptor in descriptors { try? descriptor.close() }
            throw failure
        }
        return Message(bytes: buffer, descriptors: descriptors, received: received)
    }

    /// Waits (poll(2)) until the socket is ready for `readiness` or the deadline passes.
    private func wait(for readiness: Readiness, until deadline: ContinuousClock.Instant) throws(Failure) {
        let ready: Readiness?
        do throws(SystemCallError) { ready = try readiness.wait(on: fileDescriptor, until: deadline) } catch {
            throw .systemCall(error)
        }
        guard ready != nil else { throw .timeout }
    }
}
#endif
