#if os(Linux)
import Foundation
import Glibc
import Synchronization

/// DPDK's `dpdk-testpmd` serving vhost-user-net (DPDK's vhost library: an
/// implementation of the protocol's backend side that owes nothing to
/// QEMU's libvhost-user), started by this package for a test, the bench or
/// `irqfd run`. In io forwarding with a looped port every frame the driver
/// transmits on pair k comes back on pair k's receive queue.
///
/// testpmd busy-polls one core for as long as it runs, so it must never
/// outlive its user: its standard input is a socket whose only other end this
/// object holds (close-on-exec, so no other child inherits it), and testpmd
/// exits at end of input; ``stop()`` (or deinit) closes that end, then
/// signals the process by its pid if it is still there. If this process
/// dies, the kernel closes the pipe and testpmd exits by itself.
public final class TestpmdProcess: @unchecked Sendable {
    // @unchecked: `process` and `input` are only touched by stop/kill, which
    // a caller serialises (one owner); Foundation's Process is not Sendable.
    /// The socket it listens on.
    public let socketPath: String
    /// Queue pairs it serves.
    public let queuePairs: Int
    /// Where testpmd's output goes (its EAL and vhost messages), for a failure's message.
    public let logPath: String
    /// The EAL file prefix: DPDK keeps its run-time files in /var/run/dpdk/PREFIX
    /// (removed at stop), and two instances with one prefix refuse to start.
    public let filePrefix: String
    private let process: Process
    private let input: FileHandle
    private let stopped = Mutex(false)
    private let inputClosed = Mutex(false)

    private init(
        socketPath: String, queuePairs: Int, logPath: String, filePrefix: String, process: Process, input: FileHandle
    ) {
        self.socketPath = socketPath
        self.queuePairs = queuePairs
        self.logPath = logPath
        self.filePrefix = filePrefix
        self.process = process
        self.input = input
    }

    deinit { stop() }

    /// The path of `dpdk-testpmd` on PATH (Debian's dpdk-dev), or nil when it is not installed.
    public static func executablePath() -> String? {
        BackendLaunch.executable(named: "dpdk-testpmd", fallbacks: ["/usr/bin"])
    }

    private static let instances = Atomic<Int>(0)

    /// The command line: hugepage-free EAL on cores 0 and 1, one vhost-user
    /// port on `socketPath` with `queuePairs` queue pairs, io forwarding
    /// looped back on the same port. `--rxq`/`--txq` make testpmd poll every
    /// pair (without them it forwards queue 0 alone, whatever `queues=` says);
    /// `--file-prefix` lets two instances run at once.
    public static func arguments(socketPath: String, queuePairs: Int, filePrefix: String) -> [String] {
        [
            "--no-huge", "-m", "512", "--no-pci", "-l", "0,1", "--file-prefix=\(filePrefix)",
            "--vdev", "net_vhost0,iface=\(socketPath),queues=\(queuePairs)",
            "--", "--forward-mode=io", "--port-topology=loop", "--auto-start", "--nb-cores=1",
            "--total-num-mbufs=4096", "--stats-period", "0", "--rxq=\(queuePairs)", "--txq=\(queuePairs)",
        ]
    }

    /// Starts testpmd serving `queuePairs` pairs on `socketPath` and waits
    /// (up to `timeout`) until the socket listens. Its output goes to `logPath`.
    public static func start(
        socketPath: String, queuePairs: Int = 1, logPath: String, timeout: Duration = .seconds(20)
    ) throws(VhostUserError) -> TestpmdProcess {
        guard let executable = executablePath() else {
            throw .unsupported("dpdk-testpmd is not installed (apt-get install dpdk-dev)")
        }
        let prefix = "irqfd-\(getpid())-\(instances.wrappingAdd(1, ordering: .relaxed).oldValue)"
        // A socket pair, not a pipe: socketpair(2) takes SOCK_CLOEXEC, so no
        // other child spawned meanwhile can inherit the write end (pipe2(2),
        // which would do the same, is not in Glibc's Swift module). testpmd
        // reads one byte from standard input and exits on it or at end of file.
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw .systemCall(call: "socketpair", errno: .init(rawValue: errno))
        }
        let readEnd = FileHandle(fileDescriptor: ends[0], closeOnDealloc: true)
        let writeEnd = FileHandle(fileDescriptor: ends[1], closeOnDealloc: true)
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        guard let log = FileHandle(forWritingAtPath: logPath) else {
            throw .unsupported("cannot write testpmd's log at \(logPath)")
        }
        let process = try BackendLaunch.spawn(
            executable, arguments: arguments(socketPath: socketPath, queuePairs: queuePairs, filePrefix: prefix),
            socketPath: socketPath, input: readEnd, output: log, error: log)
        // Only the child keeps the read end.
        try? readEnd.close()
        try? log.close()
        let testpmd = TestpmdProcess(
            socketPath: socketPath, queuePairs: queuePairs, logPath: logPath, filePrefix: prefix, process: process,
            input: writeEnd)
        let ready = { (path: String) in VhostUserBackendProcess.isListening(path) }
        switch BackendLaunch.waitForSocket(socketPath, of: process, timeout: timeout, ready: ready) {
        case .ready:
            return testpmd
        case .exited:
            let tail = (try? String(contentsOfFile: logPath, encoding: .utf8))?.suffix(400) ?? ""
            let status = process.terminationStatus
            throw .unsupported("dpdk-testpmd exited with status \(status) before listening: \(tail)")
        case .timedOut:
            testpmd.stop()
            throw .unsupported("dpdk-testpmd did not listen on \(socketPath) within \(timeout)")
        }
    }

    /// Whether testpmd is still running.
    public var isRunning: Bool { process.isRunning }

    /// Its exit status when it exited by itself (as it does at end of input);
    /// nil while it runs or when a signal ended it.
    public var exitStatus: Int32? {
        process.isRunning || process.terminationReason != .exit ? nil : process.terminationStatus
    }

    /// testpmd's process ID.
    public var processIdentifier: Int32 { process.processIdentifier }

    /// Kills testpmd with SIGKILL, as a crash would end it; waits for the exit
    /// and removes the socket and DPDK's run-time files. Idempotent.
    public func kill() {
        BackendLaunch.kill(process)
        cleanUp()
    }

    /// Ends testpmd: end of input (it stops forwarding and exits), then
    /// SIGTERM to its pid after 2 s, SIGKILL after 5 more; removes the socket
    /// and DPDK's run-time files. Idempotent.
    public func stop() {
        endInput()
        BackendLaunch.awaitExit(of: process, upTo: .seconds(2))
        BackendLaunch.terminate(process)
        cleanUp()
    }

    /// End of input: testpmd stops forwarding and exits by itself, as it does
    /// when this process dies and the kernel closes the socket. Idempotent.
    public func endInput() {
        let open = inputClosed.withLock { closed in
            defer { closed = true }
            return !closed
        }
        if open { try? input.close() }
    }

    private func cleanUp() {
        let first = stopped.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        endInput()
        unlink(socketPath)
        try? FileManager.default.removeItem(atPath: "/var/run/dpdk/\(filePrefix)")
    }
}
#endif
