#if os(Linux)
public import Foundation
import Glibc
import Synchronization
import VhostUser

/// Why virtiofsd could not be started.
public typealias FileSystemBackendError = BackendStartError

/// A virtiofsd the VMM started to share a host directory (`--share`): its
/// socket in a private directory, waited for until it listens, stopped
/// (SIGTERM, then SIGKILL) by `stop()` or deinit.
public final class FileSystemBackend: Sendable {
    /// The socket virtiofsd listens on.
    public var socketPath: String { directory.socketPath }
    /// The host directory it serves.
    public let sharedDirectory: String
    private let process: Mutex<VirtiofsdProcess>
    private let directory: SocketDirectory
    private let log: FileHandle?

    /// Whether virtiofsd is installed.
    public static var isInstalled: Bool { VirtiofsdProcess.installedPath() != nil }

    /// Starts virtiofsd on `sharedDirectory` and waits (up to `timeout`) for
    /// its socket; its messages go to `log` (discarded when nil).
    public init(
        sharedDirectory: String, log: FileHandle? = nil, timeout: Duration = .seconds(10)
    ) throws(FileSystemBackendError) {
        self.sharedDirectory = sharedDirectory
        self.log = log
        do { directory = try SocketDirectory(prefix: "irqfd-vhost-fs-", socket: "fs.sock") } catch {
            throw FileSystemBackendError(description: "\(error)")
        }
        do {
            process = Mutex(
                try VirtiofsdProcess.start(
                    sharedDirectory: sharedDirectory, socketPath: directory.socketPath, log: log, timeout: timeout))
        } catch {
            directory.remove()
            throw FileSystemBackendError(description: "virtiofsd could not start: \(error)")
        }
    }

    deinit { stop() }

    /// Stops virtiofsd and removes its socket directory. Idempotent.
    public func stop() {
        process.withLock { $0.stop() }
        directory.remove()
    }

    /// Kills virtiofsd with SIGKILL, as a crash would (the socket directory stays).
    public func kill() { process.withLock { $0.kill() } }

    /// Ends the running virtiofsd (SIGKILL, if it has not exited) and starts a
    /// new one on the same socket: virtiofsd serves one connection and exits
    /// when it closes, so a front-end that reconnects needs a new process.
    public func restart(timeout: Duration = .seconds(10)) throws(FileSystemBackendError) {
        try process.withLock { (process: inout VirtiofsdProcess) throws(FileSystemBackendError) in
            process.kill()
            do {
                process = try VirtiofsdProcess.start(
                    sharedDirectory: sharedDirectory, socketPath: socketPath, log: log, timeout: timeout)
            } catch {
                throw FileSystemBackendError(description: "virtiofsd could not start again: \(error)")
            }
        }
    }

    /// Whether virtiofsd is still running (it exits once its connection closes).
    public var isRunning: Bool { process.withLock { $0.isRunning } }

    /// virtiofsd's process ID.
    public var processIdentifier: Int32 { process.withLock { $0.processIdentifier } }
}
#endif
