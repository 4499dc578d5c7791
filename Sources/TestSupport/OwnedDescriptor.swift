#if os(Linux)
import Foundation
import Glibc

/// What one descriptor a test got referred to, to tell it from a later
/// descriptor with the same number (suites run in parallel and reuse
/// numbers): its inode (unique for a socket) and, for an eventfd, the
/// kernel's `eventfd-id` from /proc/self/fdinfo (unique per eventfd). Tests
/// check that the descriptors they own are closed this way, never by
/// counting the process's descriptors.
public struct OwnedDescriptor: Sendable {
    /// The descriptor number.
    public let fd: Int32
    /// Its inode and eventfd-id when recorded ("closed" if it was not open).
    public let identity: String

    /// Records what `fd` refers to now.
    public init(_ fd: Int32) {
        self.fd = fd
        identity = Self.identity(of: fd) ?? "closed"
    }

    /// The inode and eventfd-id `fd` refers to (fcntl(F_GETFD), fstat(2) and
    /// /proc/self/fdinfo), or nil if it is not open.
    public static func identity(of fd: Int32) -> String? {
        guard fcntl(fd, F_GETFD) != -1 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        let info = (try? String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8)) ?? ""
        let id = info.split(separator: "\n").first { $0.hasPrefix("eventfd-id:") } ?? ""
        return "\(st.st_ino) \(id)"
    }

    /// Whether `fd` still refers to this very file.
    public var isOpen: Bool { Self.identity(of: fd) == identity }
}
#endif
