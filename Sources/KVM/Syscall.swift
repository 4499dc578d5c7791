#if os(Linux)
import Glibc
import IrqFdCore
import IrqFdLinux

/// Runs an ioctl(2) returning its non-negative result, through the package's
/// one EINTR loop (IrqFdLinux's `retryingInterrupts`), so that a failure is an
/// error naming `call`, the request.
@inline(__always)
func retryingIoctl(_ call: StaticString, _ body: () -> Int32) throws(SystemCallError) -> Int32 {
    try retryingInterrupts("\(call)", body)
}

/// A file descriptor with exactly one owner, closed when the owner is released.
final class OwnedDescriptor: Sendable {
    let raw: Int32
    init(_ raw: Int32) { self.raw = raw }
    // close(2) of a descriptor this object owns: EBADF would be a double close elsewhere, and
    // there is nobody to report to in a deinit; Linux releases the descriptor even on EINTR.
    deinit { _ = Glibc.close(raw) }
}
#endif
