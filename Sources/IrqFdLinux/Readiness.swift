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
    /// POLLERR: an error condition (reported whether asked for or not).
    public static let error = Readiness(rawValue: Int16(POLLERR))
    /// POLLHUP: hung up (reported whether asked for or not).
    public static let hangUp = Readiness(rawValue: Int16(POLLHUP))
    /// POLLNVAL: the descriptor is not open (reported whether asked for or not).
    public static let invalid = Readiness(rawValue: Int16(POLLNVAL))

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

    /// Waits until at least one of `entries` (descriptors borrowed, each with
    /// what it is waited for) is ready or `timeout` passes (nil: for ever;
    /// zero: only looks), with one poll(2) over all of them, retried on EINTR
    /// with the time that is left. For a set that changes from one wait to the
    /// next (a loop that rebuilds it each round), where ``Epoll``'s
    /// registrations would have to follow every change.
    ///
    /// - Returns: what poll(2) reported for each entry, in order (possibly
    ///   POLLERR, POLLHUP or POLLNVAL); every one empty if the time passed first.
    public static func wait(
        on entries: [(descriptor: FileDescriptor, events: Readiness)], timeout: Duration?
    ) throws(SystemCallError) -> [Readiness] {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var polled = entries.map { pollfd(fd: $0.descriptor.rawValue, events: $0.events.rawValue, revents: 0) }
        // The time left is read inside the retried call: an EINTR retry waits less.
        _ = try retryingInterrupts("poll") {
            polled.withUnsafeMutableBufferPointer {
                poll($0.baseAddress, nfds_t($0.count), milliseconds(deadline.map { $0 - .now }))
            }
        }
        return polled.map { Readiness(rawValue: $0.revents) }
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
