#if os(Linux)
public import Foundation
import Glibc
import VhostUser

/// Why virtiofsd could not be started.
public struct FileSystemBackendError: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
}

/// A virtiofsd the VMM started to share a host directory (`--share`): its
/// socket in a private directory, waited for until it listens, stopped
/// (SIGTERM, then SIGKILL) by `stop()` or deinit.
public final class FileSystemBackend: Sendable {
    /// The socket virtiofsd listens on.
    public let socketPath: String
    /// The host directory it serves.
    public let sharedDirectory: String
    private let process: VirtiofsdProcess
    private let directory: String

    /// Whether virtiofsd is installed.
    public static var isInstalled: Bool { VirtiofsdProcess.installedPath() != nil }

    /// Starts virtiofsd on `sharedDirectory` and waits (up to `timeout`) for
    /// its socket; its messages go to `log` (discarded when nil).
    public init(
        sharedDirectory: String, log: FileHandle? = nil, timeout: Duration = .seconds(10)
    ) throws(FileSystemBackendError) {
        self.sharedDirectory = sharedDirectory
        var template = Array("/tmp/irqfd-vhost-fs-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw FileSystemBackendError(description: "mkdtemp: \(String(cString: strerror(errno)))")
        }
        directory = String(cString: made)
        socketPath = directory + "/fs.sock"
        do {
            process = try VirtiofsdProcess.start(
                sharedDirectory: sharedDirectory, socketPath: socketPath, log: log, timeout: timeout)
        } catch {
            rmdir(directory)
            throw FileSystemBackendError(description: "virtiofsd could not start: \(error)")
        }
    }

    deinit { stop() }

    /// Stops virtiofsd and removes its socket directory. Idempotent.
    public func stop() {
        process.stop()
        rmdir(directory)
    }

    /// Kills virtiofsd with SIGKILL, as a crash would (the socket directory stays).
    public func kill() { process.kill() }

    /// Whether virtiofsd is still running (it exits once its connection closes).
    public var isRunning: Bool { process.isRunning }

    /// virtiofsd's process ID.
    public var processIdentifier: Int32 { process.processIdentifier }
}
#endif
