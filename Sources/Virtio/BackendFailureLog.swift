#if os(Linux)
import Logging
import VhostUser

/// The device's log of backend failures and reconnections: one clear line
/// per event, at most one failure line and one reconnection line per
/// ``interval`` (a backend, or a guest resetting in a loop against a dead
/// one, can cause both as fast as it likes); lines left out are counted and
/// the next line of their kind says how many.
struct FailureLog {
    /// Where the lines go (`VirtioPCIDevice.logger`).
    var logger: Logger

    /// The device's name in each line, such as `virtio-blk`.
    let device: String

    /// A log for the device type named `device`, to a logger labelled `irqfd.` + `device`.
    init(device: String) {
        self.device = device
        logger = Logger(label: "irqfd.\(device)")
    }
    /// The shortest time between two lines.
    static let interval: Duration = .seconds(1)
    private var last: [Logger.Level: ContinuousClock.Instant] = [:]
    private var left: [Logger.Level: Int] = [:]
    /// Lines left out so far (since the last line of their kind).
    var suppressed: Int { left.values.reduce(0, +) }
    /// Lines written so far.
    private(set) var lines = 0

    private mutating func emit(_ level: Logger.Level, _ text: @autoclosure () -> String) {
        let now = ContinuousClock.now
        if let previous = last[level], now - previous < Self.interval {
            left[level, default: 0] += 1
            return
        }
        let count = left[level] ?? 0
        let more = count == 0 ? "" : " (\(count) more like it since the last such line)"
        last[level] = now
        left[level] = 0
        lines += 1
        logger.log(level: level, "\(text())\(more)")
    }

    /// The backend at `socketPath` failed or went away with `error`.
    mutating func report(_ error: VhostUserError, socketPath: String, needsReset: Bool) {
        let outcome =
            needsReset
            ? "DEVICE_NEEDS_RESET set and the config interrupt raised; the driver must reset the device"
            : "the reset reconnects when the backend listens again"
        let device = device
        emit(.error, "\(device) 00:02.0: vhost-user backend \(socketPath) lost (\(error)): \(outcome)")
    }

    /// A reset reconnected to the backend at `socketPath` (connection `connection`).
    mutating func reconnected(socketPath: String, connection: Int) {
        let device = device
        emit(.notice, "\(device) 00:02.0: reconnected to vhost-user backend \(socketPath) (connection \(connection))")
    }
}
#endif
