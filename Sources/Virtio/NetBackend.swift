#if os(Linux)
import Foundation
import Glibc
public import VhostUser

/// Why a network backend could not be started.
public typealias NetBackendError = BackendStartError

/// A vhost-user-net backend the VMM started: `dpdk-testpmd` (`TestpmdProcess`)
/// with its socket and log in a private directory, stopped by `stop()` or
/// deinit. testpmd busy-polls a core: keep one only while it is needed.
public final class NetBackend: Sendable {
    /// The socket the backend listens on.
    public var socketPath: String { directory.socketPath }
    /// Queue pairs it serves.
    public let queuePairs: Int
    /// The running testpmd (its pid, a kill as a crash would do it).
    public let process: TestpmdProcess
    private let directory: SocketDirectory

    /// Whether `dpdk-testpmd` is installed.
    public static var isTestpmdInstalled: Bool { TestpmdProcess.executablePath() != nil }

    /// Starts testpmd serving `queuePairs` pairs and waits (up to `timeout`) until it listens.
    public init(queuePairs: Int = 1, timeout: Duration = .seconds(60)) throws(NetBackendError) {
        do { directory = try SocketDirectory(prefix: "irqfd-vhost-net-", socket: "net.sock") } catch {
            throw NetBackendError(description: "\(error)")
        }
        self.queuePairs = queuePairs
        do {
            process = try TestpmdProcess.start(
                socketPath: directory.socketPath, queuePairs: queuePairs, logPath: directory.path + "/testpmd.log",
                timeout: timeout)
        } catch {
            unlink(directory.path + "/testpmd.log")
            directory.remove()
            throw NetBackendError(description: "dpdk-testpmd could not start: \(error)")
        }
    }

    deinit { stop() }

    /// testpmd's output so far (EAL and vhost messages).
    public var log: String { process.log }

    /// Stops testpmd and removes its directory. Idempotent.
    public func stop() {
        process.stop()
        unlink(process.logPath)
        directory.remove()
    }

    /// Whether testpmd is still running.
    public var isRunning: Bool { process.isRunning }
}
#endif
