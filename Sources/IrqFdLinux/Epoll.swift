#if os(Linux)
import CLinuxKVM
import Glibc
public import IrqFdCore
import Synchronization
public import SystemPackage

/// An epoll(7) instance, level-triggered: the package's poller. A thread
/// waits in ``wait(maximum:timeout:)`` for any of the registered descriptors
/// and learns which by the token each was registered under.
///
/// This object owns the epoll descriptor. The registered descriptors stay
/// their owners'; the kernel forgets one when it is closed (or by ``remove(_:)``).
/// ``close()`` closes it earlier than release, once: the relay closes it after
/// joining the thread that waits on it.
public final class Epoll: Sendable {
    /// The epoll descriptor, owned by this object.
    public let fileDescriptor: FileDescriptor
    private let closed = Atomic<Bool>(false)

    /// A new epoll instance (epoll_create1(2), EPOLL_CLOEXEC).
    public init() throws(SystemCallError) {
        fileDescriptor = FileDescriptor(
            rawValue: try retryingInterrupts("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
    }

    deinit { close() }

    /// Closes the epoll descriptor now (close(2)); idempotent. No thread may be waiting on it.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? fileDescriptor.close()
    }

    /// Starts reporting `descriptor` (borrowed) under `token` when it is ready
    /// for `events` (epoll_ctl(2), EPOLL_CTL_ADD).
    public func add(
        _ descriptor: FileDescriptor, events: Readiness = .readable, token: UInt64
    ) throws(SystemCallError) {
        try control(EPOLL_CTL_ADD, "epoll_ctl(EPOLL_CTL_ADD)", descriptor, events: events, token: token)
    }

    /// Changes what `descriptor` is reported for, and under which token (epoll_ctl(2), EPOLL_CTL_MOD).
    public func modify(_ descriptor: FileDescriptor, events: Readiness, token: UInt64) throws(SystemCallError) {
        try control(EPOLL_CTL_MOD, "epoll_ctl(EPOLL_CTL_MOD)", descriptor, events: events, token: token)
    }

    /// Stops reporting `descriptor` (epoll_ctl(2), EPOLL_CTL_DEL). A report
    /// already returned by a concurrent ``wait(maximum:timeout:)`` may still
    /// be acted on by its caller.
    public func remove(_ descriptor: FileDescriptor) throws(SystemCallError) {
        try control(EPOLL_CTL_DEL, "epoll_ctl(EPOLL_CTL_DEL)", descriptor, events: [], token: 0)
    }

    private func control(
        _ operation: Int32, _ call: String, _ descriptor: FileDescriptor, events: Readiness, token: UInt64
    ) throws(SystemCallError) {
        var event = epoll_event()
        // POLLIN, POLLOUT and POLLRDHUP have the values of EPOLLIN, EPOLLOUT and EPOLLRDHUP.
        event.events = UInt32(UInt16(bitPattern: events.rawValue))
        event.data.u64 = token
        _ = try retryingInterrupts(call) { epoll_ctl(fileDescriptor.rawValue, operation, descriptor.rawValue, &event) }
    }

    /// One readiness report: the token a descriptor was registered under and
    /// what it is ready for (EPOLLERR and EPOLLHUP included when they hold).
    public struct Event: Sendable, Hashable {
        /// The registration's token.
        public var token: UInt64
        /// The reported events.
        public var events: Readiness
    }

    /// Waits until at least one registered descriptor is ready, or `timeout`
    /// (nil: for ever) passes, and returns up to `maximum` reports
    /// (epoll_wait(2), retried on EINTR); empty on timeout.
    public func wait(maximum: Int = 64, timeout: Duration? = nil) throws(SystemCallError) -> [Event] {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var events = [epoll_event](repeating: epoll_event(), count: maximum)
        let count = try retryingInterrupts("epoll_wait") {
            events.withUnsafeMutableBufferPointer {
                epoll_wait(
                    fileDescriptor.rawValue, $0.baseAddress, Int32($0.count),
                    Readiness.milliseconds(deadline.map { $0 - .now }))
            }
        }
        return events[..<Int(count)].map {
            Event(token: $0.data.u64, events: Readiness(rawValue: Int16(truncatingIfNeeded: $0.events)))
        }
    }
}

#endif
