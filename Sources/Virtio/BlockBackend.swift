#if os(Linux)
public import Foundation
import Glibc

/// Which vhost-user block backend serves a disk (`--disk-backend`).
public enum DiskBackendKind: String, CaseIterable, Sendable, CustomStringConvertible {
    /// QEMU's qemu-storage-daemon with a vhost-user-blk export (third party).
    case qemuStorageDaemon = "qemu-storage-daemon"
    /// This package's `irqfd-vhost-user-blk` executable.
    case embedded

    public var description: String { rawValue }

    /// Where qemu-storage-daemon is installed, if it is (searched on PATH, then /usr/bin).
    public static var qemuStorageDaemonPath: String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") + ["/usr/bin"] {
            let candidate = "\(directory)/qemu-storage-daemon"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// The default: qemu-storage-daemon when it is installed, else the embedded backend.
    public static var preferred: DiskBackendKind { qemuStorageDaemonPath != nil ? .qemuStorageDaemon : .embedded }
}

/// Why a backend could not be started.
public struct BlockBackendError: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
}

/// A vhost-user block backend process the VMM started for a disk image: it
/// is started with its socket in a private directory, waited for until the
/// socket accepts, and stopped (SIGTERM, then SIGKILL) by `stop()` or deinit.
public final class BlockBackend: Sendable {
    /// Which backend this is.
    public let kind: DiskBackendKind
    /// The socket the backend listens on.
    public let socketPath: String
    private let process: Process
    private let directory: String

    /// Starts `kind` serving `image` with `queues` queues and waits (up to
    /// `timeout`) for its socket to accept a connection.
    public init(kind: DiskBackendKind, image: String, queues: Int = 1, timeout: Duration = .seconds(10)) throws(BlockBackendError) {
        self.kind = kind
        var template = Array("/tmp/irqfd-vhost-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BlockBackendError(description: "mkdtemp: \(String(cString: strerror(errno)))")
        }
        directory = String(cString: made)
        socketPath = directory + "/blk.sock"
        let process = Process()
        switch kind {
        case .qemuStorageDaemon:
            guard let path = DiskBackendKind.qemuStorageDaemonPath else {
                throw BlockBackendError(description: "qemu-storage-daemon is not installed (Debian: apt-get install qemu-system-common)")
            }
            process.executableURL = URL(fileURLWithPath: path)
            let escaped = image.replacingOccurrences(of: ",", with: ",,")
            process.arguments = [
                "--blockdev", "driver=file,node-name=file0,filename=\(escaped),cache.direct=off",
                "--blockdev", "driver=raw,node-name=disk0,file=file0",
                "--export", "type=vhost-user-blk,id=export0,node-name=disk0,addr.type=unix,addr.path=\(socketPath),writable=on,num-queues=\(queues)",
            ]
        case .embedded:
            guard let executable = Self.embeddedExecutable() else {
                throw BlockBackendError(description: "irqfd-vhost-user-blk was not built next to this executable (swift build)")
            }
            process.executableURL = executable
            process.arguments = [image, "--socket", socketPath, "--queues", String(queues)]
        }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        do { try process.run() } catch {
            throw BlockBackendError(description: "\(kind) could not start: \(error)")
        }
        self.process = process
        let deadline = ContinuousClock.now + timeout
        while !Self.accepts(socketPath) {
            guard process.isRunning else {
                throw BlockBackendError(description: "\(kind) exited with status \(process.terminationStatus) before its socket appeared")
            }
            guard ContinuousClock.now < deadline else {
                stop()
                throw BlockBackendError(description: "\(kind) did not open \(socketPath) within \(timeout)")
            }
            usleep(10_000)
        }
    }

    deinit { stop() }

    /// Stops the backend and removes its socket directory.
    public func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = ContinuousClock.now + .seconds(3)
            while process.isRunning, ContinuousClock.now < deadline { usleep(5_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        unlink(socketPath)
        rmdir(directory)
    }

    /// Whether the backend is still running.
    public var isRunning: Bool { process.isRunning }

    /// The embedded backend: next to the running executable or in a parent
    /// directory of it (a test bundle's), as `swift build` places it.
    /// The embedded backend executable, if `swift build` made one.
    public static func embeddedExecutable() -> URL? {
        guard let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
        var directory = URL(fileURLWithPath: me).deletingLastPathComponent()
        while !directory.path.isEmpty, directory.path != "/" {
            let candidate = directory.appendingPathComponent("irqfd-vhost-user-blk")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            directory.deleteLastPathComponent()
        }
        return nil
    }

    /// Whether `path` exists as a socket. Connecting to probe would use up
    /// qemu-storage-daemon's single vhost-user connection, so only stat(2).
    private static func accepts(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFSOCK
    }
}
#endif
