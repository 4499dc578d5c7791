#if os(Linux)
public import IrqFdCore
import CLinuxKVM
import Glibc
public import SystemPackage

/// An eventfd(2): a kernel counter that devices signal and KVM's irqfd waits on.
///
/// Non-blocking and close-on-exec. This object is the descriptor's only
/// owner and closes it when released; hand `fileDescriptor` to a device or send
/// it to another process, which then holds its own reference in the kernel.
public final class EventFD: Event {
    /// The descriptor, owned by this object.
    public let fileDescriptor: FileDescriptor

    /// Creates an eventfd with counter 0 (eventfd(2), EFD_NONBLOCK | EFD_CLOEXEC).
    public init() throws(IrqFdError) {
        do throws(SystemCallError) {
            let fd = try retryingInterrupts("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) }
            fileDescriptor = FileDescriptor(rawValue: fd)
        } catch {
            throw .systemCall(error)
        }
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

    /// Adds `count` to the counter (write(2)). EAGAIN (the counter would pass
    /// its maximum) leaves it pending, which is what a signal means.
    public func add(_ count: UInt64) {
        var value = count
        do throws(SystemCallError) {
            let written = try retryingInterruptsUnlessWouldBlock("write(eventfd)") {
                write(fileDescriptor.rawValue, &value, 8)
            }
            precondition(written == nil || written == 8, "eventfd write of 8 bytes wrote \(written ?? 0)")
        } catch {
            // EBADF or EINVAL: this object owns the descriptor, so that is a bug.
            preconditionFailure("\(error)")
        }
    }

    /// Reads and resets the counter (read(2), non-blocking); 0 when nothing was latched.
    public func consume() -> UInt64 {
        var value: UInt64 = 0
        do throws(SystemCallError) {
            let got = try retryingInterruptsUnlessWouldBlock("read(eventfd)") {
                read(fileDescriptor.rawValue, &value, 8)
            }
            guard got != nil else { return 0 }
            precondition(got == 8, "eventfd read of 8 bytes read \(got ?? 0)")
            return value
        } catch {
            preconditionFailure("\(error)")
        }
    }

    /// Consumes the counter; true if anything was latched.
    public func tryWait() -> Bool { consume() != 0 }

    /// Waits with poll(2) until readable or `timeout`, then consumes.
    public func wait(timeout: Duration) -> Bool { consume(waitingUpTo: timeout) != 0 }

    /// Waits with poll(2) up to `timeout` for the counter to be nonzero, then
    /// reads and resets it (read(2)); 0 when the time passed first.
    public func consume(waitingUpTo timeout: Duration) -> UInt64 {
        let deadline = ContinuousClock.now + timeout
        while true {
            let value = consume()
            if value != 0 { return value }
            do throws(SystemCallError) {
                guard try Readiness.readable.wait(on: fileDescriptor, until: deadline) != nil else { return consume() }
            } catch {
                preconditionFailure("\(error)")
            }
        }
    }
}
#endif
