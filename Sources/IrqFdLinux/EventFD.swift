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

    /// Why a received descriptor was not adopted by ``adopting(checking:)``.
    public enum AdoptionFailure: Error, Equatable, Sendable, CustomStringConvertible {
        /// The descriptor is something else: what its /proc/self/fd link reads.
        case notAnEventfd(String)
        /// A system call failed (readlink(2) or fcntl(2)).
        case systemCall(SystemCallError)

        /// What the descriptor was, or what failed, after "the descriptor".
        public var description: String {
            switch self {
            case .notAnEventfd(let what): "is not an eventfd (\(what))"
            case .systemCall(let error): "could not be checked: \(error)"
            }
        }
    }

    /// Takes ownership of a descriptor from a peer that is not trusted (one
    /// received by SCM_RIGHTS), after checking that it is an eventfd, and makes
    /// it non-blocking. Anything else is closed and refused: a regular file, a
    /// pipe or a socket polls readable (or hung up) for good, so a poll loop
    /// waiting on it would spin; and another anonymous inode (a timerfd, an
    /// epoll) reads and writes other things. An eventfd is an anonymous inode
    /// that fstat(2) cannot tell from the others; its /proc/self/fd link reads
    /// `anon_inode:[eventfd]` (readlink(2); fs/eventfd.c names it so).
    ///
    /// O_NONBLOCK (fcntl(2) F_SETFL, on the open file the peer shares) is what
    /// lets ``signal()`` on a counter at its maximum and ``consume()`` of an
    /// empty one return at once instead of blocking the caller (eventfd(2)).
    public static func adopting(checking descriptor: FileDescriptor) throws(AdoptionFailure) -> EventFD {
        do throws(AdoptionFailure) {
            let link = try linkTarget(of: descriptor)
            guard link == "anon_inode:[eventfd]" else { throw .notAnEventfd(link) }
            do throws(SystemCallError) {
                let flags = try retryingInterrupts("fcntl(F_GETFL)") { fcntl(descriptor.rawValue, F_GETFL) }
                _ = try retryingInterrupts("fcntl(F_SETFL, O_NONBLOCK)") {
                    fcntl(descriptor.rawValue, F_SETFL, flags | O_NONBLOCK)
                }
            } catch {
                throw .systemCall(error)
            }
        } catch {
            // Refused: nobody else owns it, and nothing useful follows from a failed close(2).
            try? descriptor.close()
            throw error
        }
        return EventFD(adopting: descriptor)
    }

    /// What `descriptor`'s /proc/self/fd link reads (readlink(2)).
    private static func linkTarget(of descriptor: FileDescriptor) throws(AdoptionFailure) -> String {
        let path = "/proc/self/fd/\(descriptor.rawValue)"
        var target = [CChar](repeating: 0, count: 64)
        let length: Int
        do throws(SystemCallError) {
            length = try retryingInterrupts("readlink(\(path))") { readlink(path, &target, target.count) }
        } catch {
            throw .systemCall(error)
        }
        return String(decoding: target[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
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

extension NativeEventHandle {
    /// The descriptor this handle is on Linux, borrowed: the inverse of
    /// ``EventFD/nativeHandle``, for a call that takes an event's eventfd
    /// (KVM_IRQFD, SET_VRING_CALL, SCM_RIGHTS).
    public var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: Int32(truncatingIfNeeded: rawValue)) }
}
#endif
