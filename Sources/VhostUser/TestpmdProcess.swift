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

    /// The command line: hugepage-free EAL with 128 MiB (the 4096 mbufs take
    /// 9 MiB; EAL initialises every page it is given, and with 512 MiB start-up
    /// took 1.9–2.5 s here against 0.6–0.9 s) on cores 0 and 1, one vhost-user
    /// port on `socketPath` with `queuePairs` queue pairs, io forwarding
    /// looped back on the same port. `--rxq`/`--txq` make testpmd poll every
    /// pair (without them it forwards queue 0 alone, whatever `queues=` says);
    /// `--file-prefix` lets two instances run at once. `--no-flush-rx`: with
    /// `--auto-start` testpmd starts forwarding once it sees the port's link
    /// up (it polls every 100 ms), and by default first reads and frees
    /// whatever its receive queues hold; the driver's first frames, sent at
    /// DRIVER_OK, would be thrown away. Without the flush they wait in the
    /// ring until forwarding starts.
    public static func arguments(socketPath: String, queuePairs: Int, filePrefix: String) -> [String] {
        [
            "--no-huge", "-m", "128", "--no-pci", "-l", "0,1", "--file-prefix=\(filePrefix)",
            "--vdev", "net_vhost0,iface=\(socketPath),queues=\(queuePairs)",
            "--", "--forward-mode=io", "--port-topology=loop", "--auto-start", "--nb-cores=1",
            "--total-num-mbufs=4096", "--stats-period", "0", "--rxq=\(queuePairs)", "--txq=\(queuePairs)",
            "--no-flush-rx",
        ]
    }

    /// Starts testpmd serving `queuePairs` pairs on `socketPath` and waits
    /// (up to `timeout`) until the socket listens. Its output goes to `logPath`.
    public static func start(
        socketPath: String, queuePairs: Int = 1, logPath: String, timeout: Duration = .seconds(60)
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
            let status = process.terminationStatus
            throw .unsupported("dpdk-testpmd exited with status \(status) before listening: \(testpmd.log.suffix(400))")
        case .timedOut:
            testpmd.stop()
            throw .unsupported(
                "dpdk-testpmd did not listen on \(socketPath) within \(timeout): \(testpmd.log.suffix(400))")
        }
    }

    /// Whether testpmd is still running.
    public var isRunning: Bool { process.isRunning }

    /// testpmd's output so far (EAL and vhost messages, its forward statistics once it has exited).
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Whether testpmd's port is up now, as its log tells: DPDK's vhost PMD
    /// raises a link state change when the device starts ("virtio is now
    /// ready for processing", then its `new_device` callback) and when it
    /// stops (`destroy_device`, at GET_VRING_BASE or a hang-up), and testpmd
    /// prints "link state change event" for each.
    ///
    /// A frame the driver transmits before the link is up may be lost, as a
    /// NIC drops frames before its link is up: when the device starts while
    /// testpmd is forwarding (a reset, a reconnection), the PMD lets each
    /// receive queue (the driver's transmit ring) carry frames just before
    /// the transmit queue it forwards to, and a frame taken in between has
    /// nowhere to go. A driver that needs every frame back waits for this.
    public var isLinkUp: Bool { Self.linkIsUp(log: log) }

    /// ``isLinkUp`` for a log's text: the last link state change is an up
    /// when the device became ready since the change before it.
    public static func linkIsUp(log: String) -> Bool {
        var up = false
        var ready = false
        for line in log.split(separator: "\n") {
            if line.contains("virtio is now ready for processing") {
                ready = true
            } else if line.contains("link state change event") {
                up = ready
                ready = false
            }
        }
        return up
    }

    /// Waits (up to `timeout`) until ``isLinkUp``; false if it never was, or if testpmd exited.
    public func waitUntilLinkUp(timeout: Duration = .seconds(20)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if isLinkUp { return true }
            guard isRunning else { return false }
            usleep(2_000)
        }
        return isLinkUp
    }

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
