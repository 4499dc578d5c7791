#if os(Linux)
import Foundation
import Glibc
import Synchronization

/// A vhost-user-blk back-end in another process, started by this package:
/// qemu-storage-daemon (third-party) or `irqfd-vhost-user-blk` (embedded).
/// `start` returns once the back-end's socket exists; `stop` (or deinit)
/// ends the process (SIGTERM, then SIGKILL after a deadline) and removes the socket.
public final class VhostUserBackendProcess: @unchecked Sendable {
    // @unchecked: `process` is only touched by start/stop, which a caller
    // serialises (one owner); Foundation's Process is not Sendable.
    /// Which back-end program.
    public enum Kind: String, Sendable, CaseIterable {
        /// QEMU's qemu-storage-daemon with a vhost-user-blk export.
        case qemuStorageDaemon = "qemu-storage-daemon"
        /// This package's `irqfd-vhost-user-blk`.
        case embedded
    }

    /// Which back-end runs.
    public let kind: Kind
    /// The socket it listens on.
    public let socketPath: String
    private let process: Process
    /// Set once the socket is unlinked: a later stop (deinit) must not remove
    /// the socket of a new back-end started on the same path.
    private var socketRemoved = false

    private init(kind: Kind, socketPath: String, process: Process) {
        self.kind = kind
        self.socketPath = socketPath
        self.process = process
    }

    deinit { stop() }

    /// The path of `qemu-storage-daemon` on PATH (/usr/bin:/bin when PATH is
    /// unset), or nil when it is not there: a PATH without it hides it.
    public static func qemuStorageDaemonPath() -> String? {
        BackendLaunch.executable(named: "qemu-storage-daemon")
    }

    /// The path of the standalone `irqfd-vhost-user-blk` built next to this
    /// process's executable or in a directory above it (swift test runs from
    /// the bundle), or nil. It takes `IMAGE --socket PATH [--queues N] [--read-only]`.
    public static func embeddedPath() -> String? {
        guard let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
        var directory = URL(fileURLWithPath: me).deletingLastPathComponent()
        while !directory.path.isEmpty, directory.path != "/" {
            let candidate = directory.appendingPathComponent("irqfd-vhost-user-blk").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory.deleteLastPathComponent()
        }
        return nil
    }

    /// The running executable and its subcommand, when it declared that it
    /// serves the embedded back-end (`servesEmbeddedBackend(asSubcommand:)`).
    private static let hostedEmbedded = Mutex<(executable: String, subcommand: [String])?>(nil)

    /// Declares that the running executable serves the embedded back-end when
    /// started with `subcommand` followed by the standalone command line
    /// (`IMAGE --socket PATH [--queues N] [--read-only]`). The embedded kind
    /// is then started from this very executable (/proc/self/exe), so a VMM
    /// runs no program it did not build itself: `swift run irqfd demo` builds
    /// the `irqfd` product only, not the standalone `irqfd-vhost-user-blk`.
    public static func servesEmbeddedBackend(asSubcommand subcommand: [String]) {
        let executable =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/proc/self/exe"
        hostedEmbedded.withLock { $0 = (executable, subcommand) }
    }

    /// How the embedded back-end starts here: the running executable with its
    /// subcommand when it declared one, else the standalone executable
    /// (`embeddedPath()`) with no leading arguments; nil when neither exists.
    public static func embeddedCommand() -> (executable: String, leadingArguments: [String])? {
        if let hosted = hostedEmbedded.withLock({ $0 }) { return (hosted.executable, hosted.subcommand) }
        return embeddedPath().map { ($0, []) }
    }

    /// The default back-end: qemu-storage-daemon when installed, else the embedded one.
    public static var defaultKind: Kind { qemuStorageDaemonPath() != nil ? .qemuStorageDaemon : .embedded }

    /// Starts `kind` serving the raw `image` with `queues` queues on
    /// `socketPath` and waits (up to `timeout`) for its socket to appear.
    public static func start(
        _ kind: Kind, image: String, socketPath: String, queues: Int = 1, readOnly: Bool = false,
        timeout: Duration = .seconds(10)
    ) throws(VhostUserError) -> VhostUserBackendProcess {
        let executable: String
        let arguments: [String]
        switch kind {
        case .qemuStorageDaemon:
            guard let path = qemuStorageDaemonPath() else { throw .unsupported("qemu-storage-daemon is not installed") }
            executable = path
            arguments = [
                // QEMU's option syntax doubles a comma inside a value.
                "--blockdev", "driver=file,node-name=file0,filename=\(image.replacingOccurrences(of: ",", with: ",,"))",
                "--blockdev", "driver=raw,node-name=disk0,file=file0",
                "--export",
                "type=vhost-user-blk,id=exp0,node-name=disk0,writable=\(readOnly ? "off" : "on"),num-queues=\(queues),addr.type=unix,addr.path=\(socketPath)",
            ]
        case .embedded:
            guard let command = embeddedCommand() else {
                throw .unsupported("irqfd-vhost-user-blk was not built (swift build)")
            }
            executable = command.executable
            arguments =
                command.leadingArguments + [image, "--socket", socketPath, "--queues", String(queues)]
                + (readOnly ? ["--read-only"] : [])
        }
        let process = try BackendLaunch.spawn(executable, arguments: arguments, socketPath: socketPath)
        let backend = VhostUserBackendProcess(kind: kind, socketPath: socketPath, process: process)
        // The file appears at bind(2), before listen(2): until then a
        // connect is refused (qemu-storage-daemon binds in place).
        switch BackendLaunch.waitForSocket(socketPath, of: process, timeout: timeout, ready: isListening) {
        case .ready:
            return backend
        case .exited:
            throw .unsupported(
                "\(kind.rawValue) exited with status \(process.terminationStatus) before its socket appeared")
        case .timedOut:
            throw .unsupported("\(kind.rawValue) did not create \(socketPath) within \(timeout)")
        }
    }

    /// Whether the socket at `path` is not known to be bound but not yet
    /// listening: /proc/net/unix lists a socket under the path it was bound
    /// to, with __SO_ACCEPTCON (0x10000) in its flags once it listens
    /// (unix(7), "/proc/net/unix"). A socket renamed into place after
    /// listen(2) (the embedded back-end) is listed under its old name, and
    /// without /proc the file's existence has to do: both count as listening.
    package static func isListening(_ path: String) -> Bool {
        guard let sockets = BackendLaunch.unixSockets(boundTo: path) else { return true }
        return sockets.isEmpty || sockets.contains { $0.flags & 0x10000 != 0 }
    }

    /// Whether the process is still running.
    public var isRunning: Bool { process.isRunning }

    /// The back-end's process ID.
    public var processIdentifier: Int32 { process.processIdentifier }

    /// Kills the back-end with SIGKILL, as a crash would end it: no chance to
    /// close its connections cleanly (the kernel closes them; the front-end
    /// sees end of file or POLLHUP). Waits for the exit and removes the
    /// socket, so that a new back-end can listen on the same path. Idempotent.
    public func kill() {
        BackendLaunch.kill(process)
        removeSocket()
    }

    private func removeSocket() {
        guard !socketRemoved else { return }
        socketRemoved = true
        unlink(socketPath)
    }

    /// Ends the back-end: SIGTERM, SIGKILL if it is still there after 5 s; removes the socket. Idempotent.
    public func stop() {
        BackendLaunch.terminate(process)
        removeSocket()
    }
}
#endif
