#if os(Linux)
import Foundation
public import Testing

// Swift Testing runs suites in parallel, so a test that counts this process's
// descriptors or threads, or reads its resident memory or malloc heap, sees
// what other tests are doing meanwhile. Such a test runs in a process of its
// own: it carries `inOwnProcess(filter)`, which skips it in the normal run,
// and a runner test calls `runInOwnProcess(filter)`, which starts this same
// test binary again with only the tests `filter` matches, one after another,
// and fails if they fail. The child counts only what those tests did.

/// The variable that tells a child started by `runInOwnProcess` which tests it is for.
private let ownProcessVariable = "IRQFD_OWN_PROCESS"

/// The filter this process was started for by `runInOwnProcess`, if it was.
public let ownProcessFilter: String? = ProcessInfo.processInfo.environment[ownProcessVariable]

/// Runs a test (or suite) only in the child process `runInOwnProcess(filter)`
/// starts; in the normal run it is skipped, saying where it runs.
public func inOwnProcess(_ filter: String) -> Testing.ConditionTrait {
    .enabled(
        if: ownProcessFilter == filter,
        "measures the whole process: runs in a process of its own (runInOwnProcess(\"\(filter)\"))")
}

/// Skips the runner tests inside a child (a child never starts another).
public let notInOwnProcess = Testing.ConditionTrait.enabled(
    if: ownProcessFilter == nil, "runs the tests of its own process from the parent test run only")

/// Runs the tests that `filter` (a Swift Testing `--filter` pattern over test
/// IDs, "Module.Suite/test") matches in a new process of this test binary,
/// serially, and records an issue unless they ran (at least one test) and
/// passed. Their output is printed, so soak figures show in the log.
public func runInOwnProcess(_ filter: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let me = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
    let run = try runProcess(
        me, ["--testing-library", "swift-testing", "--no-parallel", "--filter", filter],
        environment: [ownProcessVariable: filter])
    print("own process for \(filter): exit status \(run.status)\n\(run.stdout)\(run.stderr)")
    #expect(
        run.status == 0, "the tests matching \(filter) failed in their own process (output above)",
        sourceLocation: sourceLocation)
    // "Test run with 0 tests" would be a filter that matches nothing: a runner that cannot fail.
    // (Swift Testing reports on standard error.)
    let report = run.stdout + run.stderr
    let ran = report.contains("Test run with ") && !report.contains("Test run with 0 tests")
    #expect(ran, "no test matched \(filter) in the child", sourceLocation: sourceLocation)
}
#endif
