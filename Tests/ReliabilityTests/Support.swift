#if os(Linux)
import Foundation
import IrqFdCore
import Testing
import TinyVM

let kvmPresent = FileManager.default.fileExists(atPath: "/dev/kvm")
/// Runs the test whenever /dev/kvm exists; otherwise skips it, saying why.
let needsKVM = Testing.ConditionTrait.enabled(if: kvmPresent, "skipped: /dev/kvm is not present on this machine")

/// The interrupt-counting guest on real KVM: every vector it takes is counted
/// per vCPU in guest memory, which the host reads. The attacks in this target
/// end in these counters, so "consistent" always means "the kernel agrees".
final class CountingGuest {
    let vm: TinyVM

    /// Starts the guest on `cpus` vCPUs after `plugging` has attached devices.
    init(cpus: Int = 2, plugging: (TinyVM) throws -> Void = { _ in }) throws {
        vm = try TinyVM(.init(cpus: cpus))
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

    struct NotReady: Error { var outcome: String }

    var cpus: Int { vm.configuration.cpus }

    /// Interrupts of `vector` taken by `cpu`.
    func count(cpu: Int, vector: UInt8) -> UInt32 {
        vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: vector))
    }

    /// Interrupts taken by every vCPU, all vectors.
    var total: UInt32 { (0..<cpus).reduce(0) { $0 + vm.memory.read32(at: InterruptCounterLayout.total(cpu: $1)) } }

    /// Waits until `cpu` has taken `vector` at least `count` times.
    @discardableResult
    func waitFor(cpu: Int, vector: UInt8, count: UInt32, timeout: Duration = .seconds(10)) -> Bool {
        vm.waitUntil(timeout: timeout) { self.count(cpu: cpu, vector: vector) >= count }
    }

    /// Long enough (thousands of times the delivery latency here) for a wrong
    /// delivery to show, for checks that something did NOT arrive.
    func settle() { usleep(30_000) }
}

/// Open descriptors of this process (entries of /proc/self/fd).
func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// The open-descriptor count once it has stopped changing. A test that
/// just released a TinyVM may still hold its descriptors for a moment: the
/// vCPU threads let go of the VM after `wait()` returned (much later under a
/// sanitizer), and descriptors closing during a test must not pass for a
/// difference the test made.
func settledDescriptorCount() -> Int {
    // Unchanged for 200 ms in a row (a preempted vCPU thread can sit on a
    // released VM for tens of milliseconds under a sanitizer); at most 5 s.
    var count = openDescriptorCount()
    var steady = 0
    for _ in 0..<250 where steady < 10 {
        usleep(20_000)
        let now = openDescriptorCount()
        steady = now == count ? steady + 1 : 0
        count = now
    }
    return count
}

/// Whether AddressSanitizer or ThreadSanitizer runs in this process: then
/// resident memory and malloc's figures measure the sanitizer (quarantine,
/// shadow memory), not the code under test.
let underSanitizer = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil
    || dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_init") != nil

/// Resident set size of this process in bytes (/proc/self/statm, field 2, in pages).
func residentSetBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return -1 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return -1 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Threads of this process (entries of /proc/self/task).
func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

/// A positive integer from the environment, or `fallback`.
func environmentCount(_ name: String, default fallback: Int) -> Int {
    guard let text = ProcessInfo.processInfo.environment[name], let value = Int(text), value > 0 else { return fallback }
    return value
}

/// A seed from `name` in the environment, or a fresh one; printed either way
/// so that a failing run can be repeated exactly.
func announcedSeed(_ name: String, for what: String) -> UInt64 {
    let seed: UInt64
    if let text = ProcessInfo.processInfo.environment[name], let value = UInt64(text) {
        seed = value
    } else {
        seed = UInt64.random(in: 1...UInt64(UInt32.max))
    }
    print("\(what): seed \(seed) (repeat with \(name)=\(seed))")
    return seed
}

/// SplitMix64: a small, fast, seedable generator; the same seed gives the same run.
struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
#endif
