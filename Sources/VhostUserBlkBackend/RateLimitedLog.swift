#if os(Linux)
import Glibc

/// Lines a guest or front-end can trigger, at most `burst` per `interval`;
/// the lines held back are counted and reported with the next line let through.
/// One thread (the server's) uses it.
struct RateLimitedLog {
    let burst: Int
    let interval: Duration
    private var windowStart = ContinuousClock.now
    private var inWindow = 0
    private var suppressed = 0

    init(burst: Int = 5, interval: Duration = .seconds(1)) {
        self.burst = burst
        self.interval = interval
    }

    /// Writes `message` to standard error unless the window's burst is spent.
    /// Returns whether it was written.
    @discardableResult
    mutating func log(_ message: @autoclosure () -> String) -> Bool {
        let now = ContinuousClock.now
        if now - windowStart >= interval {
            windowStart = now
            inWindow = 0
        }
        guard inWindow < burst else {
            suppressed += 1
            return false
        }
        inWindow += 1
        let held = suppressed > 0 ? " (\(suppressed) similar lines held back)" : ""
        suppressed = 0
        let line = Array("irqfd-vhost-user-blk: \(message())\(held)\n".utf8)
        _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
        return true
    }
}
#endif
