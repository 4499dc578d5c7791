#if os(Linux)
public import IrqFdCore
import CLinuxKVM
import Glibc
public import SystemPackage

/// An eventfd(2): a kernel counter that devices signal and KVM's irqfd waits on.
///
/// Non-blocking and close-on-exec (rule 1). This object is the descriptor's only
/// owner and closes it when released; hand `fileDescriptor` to a device or send
/// it to another process, which then holds its own reference in the kernel.
public final class EventFD: Event {
    /// The descriptor, owned by this object.
    public let fileDescriptor: FileDescriptor

    /// Creates an eventfd with counter 0 (eventfd(2), EFD_NONBLOCK | EFD_CLOEXEC).
    public init() throws(IrqFdError) {
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw .call("eventfd", Errno(rawValue: errno)) }
        fileDescriptor = FileDescriptor(rawValue: fd)
    }

    /// Takes ownership of an eventfd received from elsewhere (e.g. SCM_RIGHTS).
    public init(adopting descriptor: FileDescriptor) {
        fileDescriptor = descriptor
    }

    deinit { try? fileDescriptor.close() }

    /// The eventfd as a native handle.
    public var nativeHandle: NativeEventHandle { NativeEventHandle(rawValue: Int(fileDescriptor.rawValue)) }

    /// Adds 1 to the counter (write(2) of 8 bytes). A counter already at its
    /// maximum (EAGAIN) is already pending, so that is not an error.
    public func signal() {
        add(1)
    }

    /// Adds `count` to the counter (write(2)).
    public func add(_ count: UInt64) {
        var value = count
        while true {
            let written = write(fileDescriptor.rawValue, &value, 8)
            if written == 8 { return }
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN { return }
            // EBADF or EINVAL: this object owns the descriptor, so that is a bug.
            preconditionFailure("eventfd write failed: \(Errno(rawValue: error))")
        }
    }

    /// Reads and resets the counter (read(2), non-blocking); 0 when nothing was latched.
    public func consume() -> UInt64 {
        var value: UInt64 = 0
        while true {
            let got = read(fileDescriptor.rawValue, &value, 8)
            if got == 8 { return value }
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN { return 0 }
            preconditionFailure("eventfd read failed: \(Errno(rawValue: error))")
        }
    }

    /// Consumes the counter; true if anything was latched.
    public func tryWait() -> Bool { consume() != 0 }

    /// Waits with poll(2) until readable or `timeout`, then consumes.
    public func wait(timeout: Duration) -> Bool {
        if tryWait() { return true }
        let deadline = ContinuousClock.now + timeout
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return tryWait() }
            let (seconds, attoseconds) = remaining.components
            let millis = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            var pfd = pollfd(fd: fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, millis)
            if ready < 0 && errno != EINTR { preconditionFailure("poll failed: \(Errno(rawValue: errno))") }
            if ready > 0, tryWait() { return true }
        }
    }
}
#endif
