import ArgumentParser
import Bench
import Foundation

/// `irqfd bench`: the speed of every interrupt path, side by side with the
/// kernel floor (the same operations in plain C ioctls), in one run.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure every interrupt path against the kernel floor (raw ioctls from C).",
        discussion: """
            Runs a tiny guest on /dev/kvm and measures, in one run: delivery latency per path \
            (irqfd, relay, userspace, and their C floors), throughput through 1 and 8 vectors, \
            bursts, route programming for N routes (batched, one by one, C), mask + unmask, and the \
            route lifecycle; and (--only vhost-user, or by default) virtio-blk requests through \
            qemu-storage-daemon and the embedded vhost-user back-end per delivery mode, against their \
            host-driven floor. Prints tables with ratios to the floor; --json and --svg save the results.
            """)

    @Option(name: .long, help: "Write the results as JSON to this file.")
    var json: String?

    @Option(name: .long, help: "Write latency CDFs and programming times as an SVG picture to this file.")
    var svg: String?

    @Flag(name: .long, help: "A short run (under 20 s): fewer samples and repetitions.")
    var quick = false

    @Option(name: .long, help: "Delivery latency samples per path (default 5000; 1000 with --quick).")
    var samples: Int?

    @Option(
        name: .long, parsing: .upToNextOption,
        help: "Measure only these sections: \(BenchOptions.Section.allCases.map(\.rawValue).joined(separator: ", ")).")
    var only: [String] = []

    mutating func validate() throws {
        for name in only where BenchOptions.Section(rawValue: name) == nil {
            throw ValidationError(
                "unknown section '\(name)'; sections: \(BenchOptions.Section.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        if let samples, samples < 1 { throw ValidationError("--samples must be at least 1") }
    }

    mutating func run() throws {
        let status = StatusLine()
        let runner = BenchRunner(
            options: BenchOptions(
                samples: samples, quick: quick,
                sections: only.isEmpty
                    ? Set(BenchOptions.Section.allCases) : Set(only.compactMap(BenchOptions.Section.init(rawValue:))))
        ) { status.show($0) }
        let report: BenchReport
        do {
            report = try runner.run()
        } catch {
            status.finish()
            FileHandle.standardError.write(Data("irqfd bench: \(error)\n".utf8))
            throw ExitCode(1)
        }
        status.finish()
        print(ReportText.render(report))
        if let json {
            try report.jsonData().write(to: URL(fileURLWithPath: json))
            print("\nJSON written to \(json)")
        }
        if let svg {
            try Data(BenchSVG.render(report).utf8).write(to: URL(fileURLWithPath: svg))
            print("SVG written to \(svg)")
        }
    }
}

/// The progress line on standard error: redrawn in place on a terminal,
/// otherwise a line at most once a second.
final class StatusLine {
    private let isTerminal = isatty(STDERR_FILENO) != 0
    private var lastWrite = ContinuousClock.now - .seconds(10)
    private var drawn = false

    func show(_ text: String) {
        let now = ContinuousClock.now
        if isTerminal {
            write("\r\u{1B}[K" + text)
            drawn = true
        } else if now - lastWrite >= .seconds(1) {
            write(text + "\n")
            lastWrite = now
        }
    }

    func finish() {
        if drawn { write("\r\u{1B}[K") }
        drawn = false
    }

    private func write(_ text: String) { FileHandle.standardError.write(Data(text.utf8)) }
}
