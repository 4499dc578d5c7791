#if os(Linux)
public import Logging
import Synchronization

/// Watches the call signals a backend sends (`.userspace` delivery, where a
/// VMM thread reads each queue's call eventfd) and logs a flood, rate-limited.
///
/// A hostile backend can write a call eventfd as fast as it likes. That costs
/// the VMM nothing it has to store: the eventfd's counter adds the signals up
/// (one u64) and one read takes them all, and the poller injects one
/// interrupt per read, never one per signal; with irqfd delivery the kernel
/// coalesces the same way and the VMM never sees them. So a flood cannot grow
/// memory or queue work for the vCPU. What remains is to say so: one
/// warning when a queue's signals in a one-second window pass
/// ``floodThreshold``, and no more than one per ``logInterval`` after that.
public final class CallFloodMonitor: Sendable {
    /// Signals per second on one queue above which the backend is flooding.
    public static let floodThreshold = 10_000
    /// The least time between two flood warnings.
    public static let logInterval: Duration = .seconds(10)

    private struct State {
        var windowStart = ContinuousClock.now
        var windowSignals = 0
        var lastWarning: ContinuousClock.Instant?
        var floods = 0
        var warnings = 0
        var signals = 0
        var wakeups = 0
    }

    private let state = Mutex(State())
    private let logger: Logger
    /// The device's name in each warning, such as `virtio-blk`.
    private let device: String

    /// A monitor for the device type named `device` that warns through `logger`.
    public init(device: String = "virtio-blk", logger: Logger? = nil) {
        self.device = device
        self.logger = logger ?? Logger(label: "swift-irqfd.\(device)")
    }

    /// The poller read `signals` (the eventfd's count) from queue `queue`'s call fd.
    public func observe(queue: Int, signals: UInt64) {
        let now = ContinuousClock.now
        let warning: Int? = state.withLock { s in
            s.signals += Int(clamping: signals)
            s.wakeups += 1
            if now - s.windowStart >= .seconds(1) {
                s.windowStart = now
                s.windowSignals = 0
            }
            let before = s.windowSignals
            s.windowSignals += Int(clamping: signals)
            guard before <= Self.floodThreshold, s.windowSignals > Self.floodThreshold else { return nil }
            s.floods += 1
            if let last = s.lastWarning, now - last < Self.logInterval { return nil }
            s.lastWarning = now
            s.warnings += 1
            return s.windowSignals
        }
        // Logged outside the lock: a handler may be slow.
        if let warning {
            let text =
                "\(device) queue \(queue): the backend signalled its call fd \(warning) times within a second; "
                + "coalesced, one interrupt per wake-up (further floods logged at most every \(Self.logInterval))"
            logger.warning("\(text)")
        }
    }

    /// Call signals counted (the eventfd counts they read add up to this).
    public var signals: Int { state.withLock { $0.signals } }
    /// Reads of a call fd, each one interrupt at most.
    public var wakeups: Int { state.withLock { $0.wakeups } }
    /// One-second windows in which a queue passed the threshold.
    public var floods: Int { state.withLock { $0.floods } }
    /// Warnings logged (rate-limited: at most one per ``logInterval``).
    public var warnings: Int { state.withLock { $0.warnings } }
}
#endif
