#if os(Linux)
public import Foundation
import Glibc

/// QEMU's virtiofsd (7.2, C, from Debian's qemu-system-common) serving a
/// directory as a vhost-user-fs back-end, started by this package:
/// `virtiofsd --socket-path=SOCK -o source=DIR -o sandbox=chroot`. `start`
/// returns once the socket listens; `stop` (or deinit) ends the process
/// (SIGTERM, then SIGKILL after a deadline), `kill` ends it as a crash would.
///
/// virtiofsd serves one connection and exits when it closes: a front-end that
/// reconnects needs a new process on the same socket.
public final class VirtiofsdProcess: @unchecked Sendable {
    // @unchecked: `process` is only touched by start/stop/kill, which a caller
    // serialises (one owner); Foundation's Process is not Sendable.

    /// Where Debian installs virtiofsd.
    public static let defaultPath = "/usr/lib/qemu/virtiofsd"

    /// The socket it listens on.
    public let socketPath: String
    /// The directory it serves.
    public let sharedDirectory: String
    private let process: Process
    private var socketRemoved = false

    private init(socketPath: String, sharedDirectory: String, process: Process) {
        self.socketPath = socketPath
        self.sharedDirectory = sharedDirectory
        self.process = process
    }

    deinit { stop() }

    /// The path of virtiofsd, or nil when it is not installed.
    public static func installedPath() -> String? {
        FileManager.default.isExecutableFile(atPath: defaultPath) ? defaultPath : nil
    }

    /// Starts virtiofsd serving `sharedDirectory` on `socketPath` and waits
    /// (up to `timeout`) for its socket to listen. The chroot sandbox needs
    /// root (virtiofsd's --help); its messages go to `log` (discarded when nil).
    public static func start(
        sharedDirectory: String, socketPath: String, log: FileHandle? = nil, timeout: Duration = .seconds(10)
    ) throws(VhostUserError) -> VirtiofsdProcess {
        guard let executable = installedPath() else {
            throw .unsupported("virtiofsd is not installed at \(defaultPath) (Debian's qemu-system-common)")
        }
        let process = try BackendLaunch.spawn(
            executable,
            arguments: ["--socket-path=\(socketPath)", "-o", "source=\(sharedDirectory)", "-o", "sandbox=chroot"],
            socketPath: socketPath, error: log ?? .nullDevice)
        let backend = VirtiofsdProcess(socketPath: socketPath, sharedDirectory: sharedDirectory, process: process)
        switch BackendLaunch.waitForSocket(socketPath, of: process, timeout: timeout, ready: isServing) {
        case .ready:
            return backend
        case .exited:
            throw .unsupported("virtiofsd exited with status \(process.terminationStatus) before its socket appeared")
        case .timedOut:
            throw .unsupported("virtiofsd did not create \(socketPath) within \(timeout)")
        }
    }

    /// Whether a socket bound at `path` listens, or has already been
    /// connected: /proc/net/unix lists every socket bound to a path, a
    /// listening one with __SO_ACCEPTCON (0x10000) in its flags, and the
    /// server side of an accepted connection under the same path in state 3
    /// (SS_CONNECTED; unix(7), "/proc/net/unix"). virtiofsd closes its
    /// listening socket once it has accepted its one front-end, so a
    /// front-end that connected before this looked (a VMM retrying a
    /// reconnect) leaves only the connection to see. The file itself is not
    /// enough: it appears at bind(2), before the kernel lists the address and
    /// before listen(2), and a connect then is refused. Without /proc, the
    /// file has to do.
    package static func isServing(_ path: String) -> Bool {
        guard let sockets = BackendLaunch.unixSockets(boundTo: path) else { return true }
        return sockets.contains { $0.flags & 0x10000 != 0 || $0.state == "03" }
    }

    /// Whether the process is still running.
    public var isRunning: Bool { process.isRunning }

    /// The process ID.
    public var processIdentifier: Int32 { process.processIdentifier }

    /// The exit status once it has exited (see `isRunning`).
    public var terminationStatus: Int32 { process.terminationStatus }

    /// SIGKILL, as a crash would end it; waits for the exit and removes the socket. Idempotent.
    public func kill() {
        BackendLaunch.kill(process)
        removeSocket()
    }

    /// SIGTERM, SIGKILL if it is still there after 5 s; removes the socket. Idempotent.
    public func stop() {
        BackendLaunch.terminate(process)
        removeSocket()
    }

    /// Removes the socket, and the pid file virtiofsd leaves behind: it
    /// locks /var/run/virtiofsd/<socket path, '/' as '.'>.pid and never
    /// removes it (QEMU 7.2's tools/virtiofsd/fuse_virtio.c, fv_socket_lock).
    private func removeSocket() {
        guard !socketRemoved else { return }
        socketRemoved = true
        unlink(socketPath)
        unlink("/var/run/virtiofsd/" + socketPath.replacingOccurrences(of: "/", with: ".") + ".pid")
    }
}
#endif
