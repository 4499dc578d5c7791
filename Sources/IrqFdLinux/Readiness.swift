#if os(Linux)
import Glibc
public import IrqFdCore
public import SystemPackage

/// What a descriptor can be waited for with poll(2).
public struct Readiness: OptionSet, Sendable, Hashable {
    /// The poll(2) event bits.
    public let rawValue: Int16
    /// Makes readiness from poll(2) event bits.
    public init(rawValue: Int16) { self.rawValue = rawValue }

    /// POLLIN: there is data to read (or the peer closed, or a connection to accept).
    public static let readable = Readiness(rawValue: Int16(POLLIN))
    /// POLLOUT: a write would not block.
    public static let writable = Readiness(rawValue: Int16(POLLOUT))
    /// POLLRDHUP: the stream peer shut down its writing half (or closed).
    public static let peerClosed = Readiness(rawValue: Int16(0x2000))  // POLLRDHUP, <bits/poll.h> under _GNU_SOURCE

    /// Waits until `descriptor` (borrowed) is ready for `self` or `deadline`
    /// passes (poll(2), retried on EINTR with the time that is left).
    ///
    /// - Returns: what poll(2) reported (which may include POLLERR, POLLHUP
    ///   or POLLNVAL), or `nil` if the deadline passed first.
    public func wait(
        on descriptor: FileDescriptor, until deadline: ContinuousClock.Instant
    ) throws(SystemCallError) -> Readiness? {
        while true {
            guard deadline > .now else { return nil }
            var entry = pollfd(fd: descriptor.rawValue, events: rawValue, revents: 0)
            // The time left is read inside the retried call: an EINTR retry waits less.
            let ready = try retryingInterrupts("poll") { poll(&entry, 1, Self.milliseconds(deadline - .now)) }
            if ready > 0 { return Readiness(rawValue: entry.revents) }
        }
    }

    /// `duration` in whole milliseconds for poll(2) or epoll_wait(2), rounded up
    /// so that a sub-millisecond remainder waits instead of spinning; -1 (for
    /// ever) when `nil`.
    public static func milliseconds(_ duration: Duration?) -> Int32 {
        guard let duration else { return -1 }
        guard duration > .zero else { return 0 }
        let (seconds, attoseconds) = duration.components
        return Int32(clamping: seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
    }
}
#endif
