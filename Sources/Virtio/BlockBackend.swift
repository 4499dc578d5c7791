#if os(Linux)
public import Foundation
import Glibc
import VhostUser

/// Which vhost-user block backend serves a disk (`--disk-backend`).
public enum DiskBackendKind: String, CaseIterable, Sendable, CustomStringConvertible {
    /// QEMU's qemu-storage-daemon with a vhost-user-blk export (third party).
    case qemuStorageDaemon = "qemu-storage-daemon"
    /// This package's embedded backend: `irqfd vhost-user-blk` from the running
    /// executable when it serves it, else the standalone `irqfd-vhost-user-blk`.
    case embedded

    public var description: String { rawValue }

    /// Where qemu-storage-daemon is installed, if it is.
    public static var qemuStorageDaemonPath: String? { VhostUserBackendProcess.qemuStorageDaemonPath() }

    /// The launcher's name for this kind.
    var processKind: VhostUserBackendProcess.Kind {
        switch self {
        case .qemuStorageDaemon: .qemuStorageDaemon
        case .embedded: .embedded
        }
    }

    /// The default: qemu-storage-daemon when it is installed, else the embedded backend.
    public static var preferred: DiskBackendKind { qemuStorageDaemonPath != nil ? .qemuStorageDaemon : .embedded }
}

/// Why a backend could not be started.
public typealias BlockBackendError = BackendStartError

/// A vhost-user block backend process the VMM started for a disk image: it
/// is started (by `VhostUserBackendProcess`) with its socket in a private
/// directory, waited for until the socket exists, and stopped (SIGTERM, then
/// SIGKILL) by `stop()` or deinit.
public final class BlockBackend: Sendable {
    /// Which backend this is.
    public let kind: DiskBackendKind
    /// The socket the backend listens on.
    public var socketPath: String { directory.socketPath }
    private let process: VhostUserBackendProcess
    private let directory: SocketDirectory

    /// Starts `kind` serving `image` with `queues` queues and waits (up to
    /// `timeout`) for its socket.
    public init(kind: DiskBackendKind, image: String, queues: Int = 1, timeout: Duration = .seconds(10))
        throws(BlockBackendError)
    {
        self.kind = kind
        do { directory = try SocketDirectory(prefix: "irqfd-vhost-", socket: "blk.sock") } catch {
            throw BlockBackendError(description: "\(error)")
        }
        do {
            process = try VhostUserBackendProcess.start(
                kind.processKind, image: image, socketPath: directory.socketPath, queues: queues, timeout: timeout)
        } catch {
            directory.remove()
            throw BlockBackendError(description: "\(kind) could not start: \(error)")
        }
    }

    deinit { stop() }

    /// Stops the backend and removes its socket directory. Idempotent.
    public func stop() {
        process.stop()
        directory.remove()
    }

    /// Whether the backend is still running.
    public var isRunning: Bool { process.isRunning }

    /// The backend's process ID (a VMM handing the backend to its successor passes it on).
    public var processIdentifier: Int32 { process.processIdentifier }

    /// The private directory holding the socket, removed by `stop()`.
    public var socketDirectory: String { directory.path }

    /// The executable that runs the embedded backend, if there is one: the
    /// running executable when it serves it as a subcommand
    /// (`VhostUserBackendProcess.servesEmbeddedBackend(asSubcommand:)`, as
    /// `irqfd` does), else the standalone one if `swift build` made it (next
    /// to the running executable or in a directory above it, as for a test bundle).
    public static func embeddedExecutable() -> URL? {
        VhostUserBackendProcess.embeddedCommand().map { URL(fileURLWithPath: $0.executable) }
    }
}
#endif
