#if os(Linux)
import Foundation
import Glibc

/// What one descriptor a test got referred to, to tell it from a later
/// descriptor with the same number. Tests check that the descriptors they
/// own are closed this way, never by counting the process's descriptors.
///
/// A number and what fstat(2) and /proc/self/fdinfo say are not enough on
/// their own: suites run in parallel, close(2) frees the lowest number, and
/// the kernel frees an eventfd's `eventfd-id` with the eventfd and gives the
/// lowest free id to the next one (every eventfd shares one anonymous inode).
/// So an eventfd closed by its owner and another opened anywhere in the
/// process just after can show the same number, inode and id: the check
/// would call a closed descriptor open. To make the identity unique, the
/// record holds a duplicate of any descriptor that is not a socket (a
/// "pin"): while the pin lives the file stays allocated, so its inode and
/// its eventfd-id cannot be given to another file. A socket is not pinned
/// (a duplicate would keep the connection open and hide the close from the
/// peer); its inode is unique already (sockfs numbers each socket anew).
public struct OwnedDescriptor: Sendable {
    /// The descriptor number.
    public let fd: Int32
    /// Its inode and eventfd-id when recorded ("closed" if it was not open).
    public let identity: String
    /// The duplicate that keeps a non-socket's identity from being reused.
    private let pin: Pin?

    /// A duplicate descriptor (fcntl(F_DUPFD_CLOEXEC)), closed with the
    /// last copy of the record that holds it.
    private final class Pin: Sendable {
        let fd: Int32
        init(_ fd: Int32) { self.fd = fd }
        deinit { close(fd) }
    }

    /// Records what `fd` refers to now, pinning it unless it is a socket.
    /// Traps if the duplicate cannot be made (out of descriptors: the test
    /// could not tell anything apart).
    public init(_ fd: Int32) {
        self.fd = fd
        guard let identity = Self.identity(of: fd) else {
            (identity, pin) = ("closed", nil)
            return
        }
        self.identity = identity
        if Self.isSocket(fd) {
            pin = nil
        } else {
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            precondition(copy >= 0, "OwnedDescriptor: fcntl(\(fd), F_DUPFD_CLOEXEC) failed: errno \(errno)")
            pin = Pin(copy)
        }
    }

    /// The inode and eventfd-id `fd` refers to (fcntl(F_GETFD), fstat(2) and
    /// /proc/self/fdinfo), or nil if it is not open. Unique only for a file
    /// something keeps allocated (see the type's comment).
    public static func identity(of fd: Int32) -> String? {
        guard fcntl(fd, F_GETFD) != -1 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        let info = (try? String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8)) ?? ""
        let id = info.split(separator: "\n").first { $0.hasPrefix("eventfd-id:") } ?? ""
        return "\(st.st_dev):\(st.st_ino) \(id)"
    }

    /// Whether `fd` is a socket (fstat(2)).
    private static func isSocket(_ fd: Int32) -> Bool {
        var st = stat()
        return fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
    }

    /// Whether `fd` still refers to this very file.
    public var isOpen: Bool { identity != "closed" && Self.identity(of: fd) == identity }
}
#endif
