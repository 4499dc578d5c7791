#if os(Linux)
import CLinuxKVM
import Glibc
import IrqFdCore
import SystemPackage

/// Runs an ioctl(2) returning its non-negative result, retrying on EINTR
/// (as NIOPosix does), and turning failure into an error that names `call`.
@inline(__always)
func retryingIoctl(_ call: StaticString, _ body: () -> Int32) throws(SystemCallError) -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        let error = irqfd_errno()
        if error == EINTR { continue }
        throw SystemCallError(call: "\(call)", errno: Errno(rawValue: error))
    }
}

/// A file descriptor with exactly one owner, closed when the owner is released.
final class OwnedDescriptor: Sendable {
    let raw: Int32
    init(_ raw: Int32) { self.raw = raw }
    deinit { _ = Glibc.close(raw) }
}
#endif
