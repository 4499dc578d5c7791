#if os(Linux)
import Foundation
import Synchronization
import TestSupport
import Testing
import TinyVM

/// The `irqfd run` processes a live-update test starts, one per generation
/// of its guest: generation g listens for its successor on `socket(g)` and
/// writes its standard error to `errors(g)`. Files, not pipes: a backend a
/// process started outlives it, holding whatever it inherited. When the
/// guest starts in the test's own process, that VMM is generation 0 and the
/// processes are generations 1, 2, ...
final class RunGenerations {
    let irqfd: URL
    /// What the sockets and logs are named after.
    let name: String
    /// The processes started, in order.
    private(set) var processes: [Process] = []

    init(name: String) throws {
        self.name = name
        irqfd = try builtExecutable("irqfd")
    }

    func socket(_ generation: Int) -> String { "/tmp/\(name)-\(generation).sock" }
    func errors(_ generation: Int) -> String { "/tmp/\(name)-\(generation).err" }

    /// What generation `generation` has written to its standard error so far.
    func log(_ generation: Int) -> String {
        (try? String(contentsOfFile: errors(generation), encoding: .utf8)) ?? ""
    }

    /// Starts `irqfd run` with `arguments` as generation `generation`, its
    /// standard error to `errors(generation)` unless `standardError` is given.
    @discardableResult
    func start(_ generation: Int, _ arguments: [String], standardError: FileHandle? = nil) throws -> Process {
        let process = Process()
        process.executableURL = irqfd
        process.arguments = ["run"] + arguments
        if let standardError {
            process.standardError = standardError
        } else {
            _ = FileManager.default.createFile(atPath: errors(generation), contents: nil)
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errors(generation)))
        }
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        processes.append(process)
        return process
    }

    /// Hands the guest from generation `processes.count` (0: `source`, the
    /// VMM in this process) to a new `irqfd run --incoming` process that
    /// listens for the next; waits until the old generation handed over (the
    /// source completed, or the old process exited 0) and returns the line
    /// the new one printed.
    @discardableResult
    func handOff(
        from source: LiveUpdateSource, sourceLog: LogLines, sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> String {
        let from = processes.count
        try start(
            from + 1, ["--incoming", socket(from), "--update-socket", socket(from + 1), "--timeout", "600"])
        if from == 0 {
            let deadline = ContinuousClock.now + .seconds(60)
            while source.completed == nil, ContinuousClock.now < deadline { usleep(1_000) }
            #expect(source.completed == .takenOver, "\(sourceLog.all)", sourceLocation: sourceLocation)
        } else {
            let old = processes[from - 1]
            #expect(try Self.exitStatus(old) == 0, "\(log(from))", sourceLocation: sourceLocation)
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while !log(from + 1).contains("\n"), ContinuousClock.now < deadline { usleep(1_000) }
        return firstLine(from + 1)
    }

    /// The first line generation `generation` wrote (its takeover line, for a successor).
    func firstLine(_ generation: Int) -> String { String(log(generation).prefix { $0 != "\n" }) }

    /// The process's exit status, waiting at most `timeout` (then killed: status nil).
    static func exitStatus(_ process: Process, timeout: Duration = .seconds(60)) throws -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now > deadline {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                return nil
            }
            usleep(1_000)
        }
        return process.terminationStatus
    }

    /// Kills the processes still running (SIGKILL).
    func killRunning() {
        for process in processes where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Removes every generation's socket and log.
    func removeFiles() {
        for generation in 0...processes.count {
            try? FileManager.default.removeItem(atPath: socket(generation))
            try? FileManager.default.removeItem(atPath: errors(generation))
        }
    }
}

/// Lines a thread logs (a live-update source's), collected for a failure message.
final class LogLines: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}
#endif
