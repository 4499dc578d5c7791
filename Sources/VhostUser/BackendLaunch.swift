#if os(Linux)
import Foundation
import Glibc

/// What the back-end launchers (``VhostUserBackendProcess``, ``TestpmdProcess``,
/// ``VirtiofsdProcess``) do alike: find the program, spawn it so that a
/// SIGTERM reaches it, wait for its socket, and end it.
enum BackendLaunch {
    /// The first executable `name` in PATH's directories (/usr/bin:/bin when
    /// PATH is unset), then in `fallbacks`; nil when there is none.
    static func executable(named name: String, fallbacks: [Substring] = []) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") + fallbacks {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Removes whatever is at `socketPath` (a stale socket would be taken for
    /// the new back-end's), then spawns `executable` with `arguments`, its
    /// standard input and output from `input` and `output`, and its standard
    /// error to `error` (this process's own when nil).
    ///
    /// The child inherits the spawning thread's signal mask, and the threads
    /// that start back-ends (Swift concurrency's and Dispatch's workers, where
    /// every test runs) block SIGTERM: a back-end then ignored `stop()`'s
    /// SIGTERM and was SIGKILLed 5 s later, every time (and was orphaned for
    /// good if this process died). SIGTERM and SIGINT are unblocked around
    /// the spawn only.
    static func spawn(
        _ executable: String, arguments: [String], socketPath: String, input: FileHandle = .nullDevice,
        output: FileHandle = .nullDevice, error: FileHandle? = nil
    ) throws(VhostUserError) -> Process {
        unlink(socketPath)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = input
        process.standardOutput = output
        if let error { process.standardError = error }
        var terminate = sigset_t()
        var mask = sigset_t()
        sigemptyset(&terminate)
        sigaddset(&terminate, SIGTERM)
        sigaddset(&terminate, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &terminate, &mask)
        defer { pthread_sigmask(SIG_SETMASK, &mask, nil) }
        do { try process.run() } catch {
            let code = Int32(truncatingIfNeeded: (error as NSError).code)
            throw .systemCall(call: "posix_spawn(\(executable))", errno: .init(rawValue: code == 0 ? ENOENT : code))
        }
        return process
    }

    /// The entries of /proc/net/unix for sockets bound to `path`: their flags
    /// (__SO_ACCEPTCON, 0x10000, once listening) and state (03 for
    /// SS_CONNECTED), unix(7) "/proc/net/unix"; nil without /proc.
    static func unixSockets(boundTo path: String) -> [(flags: UInt32, state: Substring)]? {
        // Read to the end: String(contentsOfFile:) stops after the first read
        // of a /proc file (about 4 KiB), and a busy system lists more.
        guard let file = FileHandle(forReadingAtPath: "/proc/net/unix") else { return nil }
        defer { try? file.close() }
        let table = String(decoding: file.readDataToEndOfFile(), as: UTF8.self)
        return table.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 8, fields[7] == path, let flags = UInt32(fields[3], radix: 16) else { return nil }
            return (flags, fields[5])
        }
    }

    /// How waiting for a back-end's socket ended.
    enum SocketWait {
        /// A socket is at the path and `ready` said it serves.
        case ready
        /// The process exited first.
        case exited
        /// The deadline passed first.
        case timedOut
    }

    /// Polls every 10 ms, up to `timeout`, until a socket file exists at
    /// `path` and `ready(path)` holds, or `process` is no longer running.
    static func waitForSocket(
        _ path: String, of process: Process, timeout: Duration, ready: (String) -> Bool
    ) -> SocketWait {
        let deadline = ContinuousClock.now + timeout
        while true {
            var info = stat()
            if stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK, ready(path) { return .ready }
            guard process.isRunning else { return .exited }
            guard ContinuousClock.now < deadline else { return .timedOut }
            usleep(10_000)
        }
    }

    /// Waits up to `limit` for `process` to exit by itself.
    static func awaitExit(of process: Process, upTo limit: Duration) {
        let deadline = ContinuousClock.now + limit
        while process.isRunning, ContinuousClock.now < deadline { usleep(5_000) }
    }

    /// SIGTERM, SIGKILL if it is still running after 5 s, then reaps it. Nothing when it has exited.
    static func terminate(_ process: Process) {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGTERM)
        awaitExit(of: process, upTo: .seconds(5))
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// SIGKILL, as a crash would end it, then reaps it. Nothing when it has exited.
    static func kill(_ process: Process) {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
#endif
