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
/// This object owns its descriptor and closes it when released.
public final class UnixSocket: Sendable {
    /// The socket, owned by this object.
    public let fileDescriptor: FileDescriptor
    /// The path a listening socket is bound to (removed again when it is released).
    public let boundPath: String?

    private init(_ fd: Int32, boundPath: String? = nil) {
        fileDescriptor = FileDescriptor(rawValue: fd)
        self.boundPath = boundPath
    }

    deinit {
        try? fileDescriptor.close()
        if let boundPath { unlink(boundPath) }
    }

    private static func makeSocket() throws(IrqFdError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .call("socket(AF_UNIX)", Errno(rawValue: errno)) }
        return fd
    }

    /// A socket listening at `path` (socket(2), bind(2), listen(2)); a stale
    /// socket file at `path` is replaced.
    public static func listen(at path: String) throws(IrqFdError) -> UnixSocket {
        let fd = try makeSocket()
        unlink(path)
        guard irqfd_unix_bind(fd, path) == 0 else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw .call("bind(\(path))", error)
        }
        let socket = UnixSocket(fd, boundPath: path)
        guard Glibc.listen(fd, 1) == 0 else { throw .call("listen", Errno(rawValue: errno)) }
        return socket
    }

    /// A socket connected to the one listening at `path` (connect(2)).
    public static func connect(to path: String) throws(IrqFdError) -> UnixSocket {
        let fd = try makeSocket()
        let socket = UnixSocket(fd)
        while irqfd_unix_connect(fd, path) != 0 {
            if errno == EINTR { continue }
            throw .call("connect(\(path))", Errno(rawValue: errno))
        }
        return socket
    }

    /// The next connection to a listening socket (accept(2), then close-on-exec
    /// with fcntl(2): Glibc's Swift module does not export accept4).
    public func accept() throws(IrqFdError) -> UnixSocket {
        while true {
            let fd = Glibc.accept(fileDescriptor.rawValue, nil, nil)
            if fd >= 0 {
                let socket = UnixSocket(fd)
                guard fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else { throw .call("fcntl(F_SETFD)", Errno(rawValue: errno)) }
                return socket
            }
            if errno == EINTR { continue }
            throw .call("accept", Errno(rawValue: errno))
        }
    }

    /// Sends `bytes` (at least one) with `descriptor` attached (sendmsg(2),
    /// SCM_RIGHTS). The receiver gets its own descriptor for the same file.
    public func send(_ bytes: [UInt8], passing descriptor: FileDescriptor) throws(IrqFdError) {
        precondition(!bytes.isEmpty, "a descriptor travels with at least one byte")
        while true {
            let sent = bytes.withUnsafeBytes { irqfd_send_fd(fileDescriptor.rawValue, descriptor.rawValue, $0.baseAddress, $0.count) }
            if sent == bytes.count { return }
            if sent < 0, errno == EINTR { continue }
            throw .call("sendmsg(SCM_RIGHTS)", sent < 0 ? Errno(rawValue: errno) : .messageTooLong)
        }
    }

    /// Receives up to `maximum` bytes and the descriptor sent with them, if any
    /// (recvmsg(2)). The caller owns the descriptor. No bytes means the peer closed.
    public func receiveWithDescriptor(maximum: Int = 256) throws(IrqFdError) -> (bytes: [UInt8], descriptor: FileDescriptor?) {
        var buffer = [UInt8](repeating: 0, count: maximum)
        var fd: Int32 = -1
        while true {
            let got = buffer.withUnsafeMutableBytes { irqfd_recv_fd(fileDescriptor.rawValue, &fd, $0.baseAddress, $0.count) }
            if got >= 0 { return (Array(buffer[..<got]), fd >= 0 ? FileDescriptor(rawValue: fd) : nil) }
            if errno == EINTR { continue }
            throw .call("recvmsg", Errno(rawValue: errno))
        }
    }

    /// Sends all of `bytes` (send(2)).
    public func send(_ bytes: [UInt8]) throws(IrqFdError) {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fileDescriptor.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0 {
                if errno == EINTR { continue }
                throw .call("send", Errno(rawValue: errno))
            }
            offset += sent
        }
    }

    /// Receives up to `maximum` bytes (recv(2)); empty when the peer closed.
    public func receive(maximum: Int = 256) throws(IrqFdError) -> [UInt8] {
        let (bytes, descriptor) = try receiveWithDescriptor(maximum: maximum)
        // Nobody asked for a descriptor here: do not leak one that came anyway.
        try? descriptor?.close()
        return bytes
    }
}
#endif
