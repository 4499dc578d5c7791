#if os(Linux)
import Glibc
import TinyVM

extension LiveUpdateSource {
    /// A test's end on the old VMM's side: the hand-off settles (taken over
    /// or rolled back), the old VM's guest stops and its threads are joined,
    /// and the update socket is removed.
    func settleThenStop(_ old: TinyVM, socket path: String) {
        _ = waitUntilSettled()
        old.stop()
        _ = old.wait()
        unlink(path)
    }
}
#endif
