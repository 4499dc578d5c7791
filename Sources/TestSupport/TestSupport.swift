#if os(Linux)
public import Foundation
public import IrqFdKVM
package import KVM
public import Testing
public import TinyVM
import Synchronization

/// Whether this machine has /dev/kvm.
public let kvmPresent = FileManager.default.fileExists(atPath: "/dev/kvm")

/// Runs a test whenever /dev/kvm exists; otherwise skips it, saying why.
public let needsKVM = Testing.ConditionTrait.enabled(if: kvmPresent, "skipped: /dev/kvm is not present on this machine")

/// Polls `condition` every millisecond until it holds or `timeout` passes.
public func eventually(_ timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { return false }
        usleep(1000)
    }
    return true
}

/// The interrupt-counting guest (`GuestProgram.interruptCounter`) running on
/// real KVM: every vector it takes is counted per vCPU in guest memory, which
/// the host reads. Tests end in these counters, so "delivered" always means
/// the kernel delivered it and a guest handler ran.
public final class CountingGuest {
    /// The VM running the guest.
    public let vm: TinyVM
    /// The VM's KVM irqfd partition.
    public var irqfd: KVMIrqFd { vm.irqfd }
    /// The VM's ioctl counters.
    package var counters: IoctlCounters { vm.vm.counters }
    /// vCPUs running the guest.
    public var cpus: Int { vm.configuration.cpus }

    /// Starts the guest on `cpus` vCPUs, after `plugging` has attached devices,
    /// and waits until every vCPU has its APIC and vector table set up.
    /// The VM's partition is synchronous unless `coalescesCommits` is true:
    /// these guests serve tests of the routing library itself, whose drops
    /// and pushes happen in the call (rule 10). Devices' tests use a
    /// coalescing VM, as `irqfd run` does.
    public init(cpus: Int = 2, coalescesCommits: Bool = false, plugging: (TinyVM) throws -> Void = { _ in }) throws {
        vm = try TinyVM(.init(cpus: cpus, coalescesCommits: coalescesCommits))
        try vm.load(GuestProgram.interruptCounter.image)
        try plugging(vm)
        vm.start()
        let ready = vm.waitUntil(timeout: .seconds(20)) {
            (0..<cpus).allSatisfy { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: $0)) == 1 }
        }
        guard ready else { throw NotReady(outcome: "\(vm.hasEnded ? "\(vm.wait())" : "still running")") }
    }

    deinit {
        vm.stop()
        vm.wait()
    }

    /// The guest did not come up; how the run ended, if it did.
    public struct NotReady: Error {
        /// The run's outcome, or "still running".
        public var outcome: String
        /// A guest that did not come up, and how its run ended.
        public init(outcome: String) { self.outcome = outcome }
    }

    /// Interrupts of `vector` taken by `cpu`.
    public func count(cpu: Int, vector: UInt8) -> UInt32 {
        vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: vector))
    }

    /// Interrupts taken by `cpu`, all vectors.
    public func total(cpu: Int) -> UInt32 { vm.memory.read32(at: InterruptCounterLayout.total(cpu: cpu)) }

    /// Interrupts taken by every vCPU, all vectors.
    public var total: UInt32 { (0..<cpus).reduce(0) { $0 + total(cpu: $1) } }

    /// Waits until `cpu` has taken `vector` at least `count` times.
    @discardableResult
    public func waitFor(cpu: Int, vector: UInt8, count: UInt32, timeout: Duration = .seconds(10)) -> Bool {
        vm.waitUntil(timeout: timeout) { self.count(cpu: cpu, vector: vector) >= count }
    }

    /// Long enough (thousands of times the delivery latency here) for a wrong
    /// delivery to show, for checks that something did NOT arrive.
    public func settle() { usleep(50_000) }

    /// Records an issue if the guest stopped running, with how it ended.
    public func expectAlive(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!vm.hasEnded, "guest ended: \(vm.hasEnded ? "\(vm.wait())" : "")", sourceLocation: sourceLocation)
    }
}

/// Open descriptors of this process (entries of /proc/self/fd).
public func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// This process's open descriptors, each as "number -> what it refers to".
/// Leak checks compare sets rather than counts: a descriptor an earlier test
/// releases late lowers a count and would hide a leak of the same size.
public func openDescriptors() -> Set<String> {
    let directory = "/proc/self/fd"
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return Set(entries.compactMap { fd in
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(fd)")).map { "\(fd) -> \($0)" }
    })
}

/// The descriptors open now that were not open in `before`, after waiting up
/// to `timeout` for them to close (closing can trail the release of an
/// object on another thread by a little).
public func descriptorsLeaked(since before: Set<String>, timeout: Duration = .seconds(5)) -> Set<String> {
    let deadline = ContinuousClock.now + timeout
    while true {
        let leaked = openDescriptors().subtracting(before)
        if leaked.isEmpty || ContinuousClock.now > deadline { return leaked }
        usleep(20_000)
    }
}

/// Threads of this process (entries of /proc/self/task).
public func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

// MARK: - Tests that measure the whole process

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
    #expect(run.status == 0, "the tests matching \(filter) failed in their own process (output above)", sourceLocation: sourceLocation)
    // "Test run with 0 tests" would be a filter that matches nothing: a runner that cannot fail.
    // (Swift Testing reports on standard error.)
    let report = run.stdout + run.stderr
    let ran = report.contains("Test run with ") && !report.contains("Test run with 0 tests")
    #expect(ran, "no test matched \(filter) in the child", sourceLocation: sourceLocation)
}

/// One of the package's executables, which `swift test` builds next to the test bundle.
public func builtExecutable(_ name: String) throws -> URL {
    let me = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
    var directory = me.deletingLastPathComponent()
    // The bundle may be a directory (…/Foo.xctest/…) or a plain executable.
    while !directory.path.isEmpty, directory.path != "/" {
        let candidate = directory.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        directory.deleteLastPathComponent()
    }
    throw TestFailure("\(name) was not built next to \(me.path): run `swift build` first")
}

/// A test could not do what it needed to, and why.
public struct TestFailure: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    /// A failure described by `description`.
    public init(_ description: String) { self.description = description }
}

/// Runs `executable` with `arguments` (and `environment` added to this
/// process's) to the end; returns its exit status, standard output and standard error.
public func runProcess(
    _ executable: URL, _ arguments: [String], environment: [String: String] = [:]
) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    let output = Pipe(), errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Drain both pipes concurrently so neither fills up and blocks the child.
    let stdoutData = LockedData()
    let reader = Thread { stdoutData.set(output.fileHandleForReading.readDataToEndOfFile()) }
    reader.start()
    let errorData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while !stdoutData.isSet { usleep(1_000) }
    return (process.terminationStatus, String(decoding: stdoutData.value, as: UTF8.self), String(decoding: errorData, as: UTF8.self))
}

/// Data written once by a reader thread and read after it is set.
private final class LockedData: Sendable {
    private let data = Mutex<Data?>(nil)
    func set(_ value: Data) { data.withLock { $0 = value } }
    var isSet: Bool { data.withLock { $0 != nil } }
    var value: Data { data.withLock { $0 ?? Data() } }
}
#endif
