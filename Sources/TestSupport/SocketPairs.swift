#if os(Linux)
import Glibc

/// Connected Unix socket pairs held open to lengthen /proc/net/unix, which
/// lists every socket of the system, past the first 4 KiB that one read of
/// the file returns: what a busy machine looks like to a reader of it.
/// `close` (idempotent) closes them.
public final class SocketPairs {
    private var descriptors: [Int32] = []

    /// Opens `count` pairs.
    public init(count: Int) throws {
        for _ in 0..<count {
            var pair: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else {
                let error = errno
                close()
                throw TestFailure("socketpair: errno \(error)")
            }
            descriptors += pair
        }
    }

    /// Closes every pair.
    public func close() {
        for fd in descriptors { Glibc.close(fd) }
        descriptors = []
    }

    deinit { close() }
}
#endif
