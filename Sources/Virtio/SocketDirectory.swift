#if os(Linux)
import Glibc
import IrqFdCore
import SystemPackage

/// A directory of a backend's own for the socket it listens on, made by
/// mkdtemp(3) with mode 0700, so no other user can reach the socket.
struct SocketDirectory: Sendable {
    /// The directory.
    let path: String
    /// The socket's path in it.
    let socketPath: String

    /// Makes `/tmp/<prefix>XXXXXX` for a socket named `socket`.
    init(prefix: String, socket: String) throws(SystemCallError) {
        var template = Array("/tmp/\(prefix)XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemCallError(call: "mkdtemp", errno: Errno(rawValue: errno))
        }
        path = String(cString: made)
        socketPath = path + "/" + socket
    }

    /// Removes the directory (rmdir(2): once the backend's files in it are gone).
    func remove() { rmdir(path) }
}
#endif
