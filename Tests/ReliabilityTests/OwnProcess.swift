#if os(Linux)
import TestSupport
import Testing

/// The suites here that count this process's descriptors and threads, read
/// its resident memory and malloc heap, or lower its descriptor limit: in a
/// parallel run other suites change all of these, so each runs in a process
/// of its own (`runInOwnProcess`), where only it runs.
enum OwnProcess {
    static let leakSoak = "ReliabilityTests.LeakSoakTests/"
    static let lifecycleFaults = "ReliabilityTests.LifecycleFaultTests/"
    static let routeFaults = "ReliabilityTests.RouteFaultTests/"
}

/// Starts the suites above, each in its own process (in parallel with the
/// rest of the run: a child sees only its own suite). Each runner's name
/// contains its suite's, so `swift test --filter LeakSoakTests` runs it.
@Suite(needsKVM, notInOwnProcess) struct OwnProcessRuns {
    @Test func runLeakSoakTests() throws { try runInOwnProcess(OwnProcess.leakSoak) }
    @Test func runLifecycleFaultTests() throws { try runInOwnProcess(OwnProcess.lifecycleFaults) }
    @Test func runRouteFaultTests() throws { try runInOwnProcess(OwnProcess.routeFaults) }
}
#endif
