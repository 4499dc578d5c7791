#if os(Linux)
import Glibc
public import IrqFdCore
public import SystemPackage

/// Runs `body`, a system call that returns -1 and sets errno when it fails,
/// again while it fails with EINTR (a signal arrived first: nothing was done),
/// and turns any other failure into an error naming `call` and the errno.
///
/// The one EINTR loop of the package, as swift-system's
/// `valueOrErrno(retryOnInterrupt:)` and SwiftNIO's `syscall(blocking:)` are.
/// `call` names the C call (or the ioctl request), so the error says which
/// call of a sequence failed.
public func retryingInterrupts<Result: FixedWidthInteger>(
    _ call: @autoclosure () -> String, _ body: () -> Result
) throws(SystemCallError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno(rawValue: Glibc.errno)
        if error == .interrupted { continue }
        throw SystemCallError(call: call(), errno: error)
    }
}

/// ``retryingInterrupts(_:_:)`` for a call on a non-blocking descriptor:
/// `nil` when it would block (EAGAIN, EWOULDBLOCK), so the caller waits for
/// readiness (``Readiness``) and tries again.
public func retryingInterruptsUnlessWouldBlock<Result: FixedWidthInteger>(
    _ call: @autoclosure () -> String, _ body: () -> Result
) throws(SystemCallError) -> Result? {
    do throws(SystemCallError) {
        return try retryingInterrupts(call(), body)
    } catch {
        if error.errno == .resourceTemporarilyUnavailable || error.errno == .wouldBlock { return nil }
        throw error
    }
}
extension FileDescriptor {
    /// A new descriptor for the same open file, close-on-exec (fcntl(2),
    /// F_DUPFD_CLOEXEC), owned by the caller: a thread that watches a
    /// descriptor another owner may close at any time watches its own copy.
    public func duplicateCloseOnExec() throws(SystemCallError) -> FileDescriptor {
        let copy = try retryingInterrupts("fcntl(F_DUPFD_CLOEXEC)") { fcntl(rawValue, F_DUPFD_CLOEXEC, 0) }
        return FileDescriptor(rawValue: copy)
    }
}
#endif
