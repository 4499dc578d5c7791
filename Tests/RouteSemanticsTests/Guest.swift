#if os(Linux)
import Foundation
import IrqFdCore
import Testing
import TinyVM

let kvmPresent = FileManager.default.fileExists(atPath: "/dev/kvm")
/// Runs the test whenever /dev/kvm exists; otherwise skips it, saying why.
let needsKVM = Testing.ConditionTrait.enabled(if: kvmPresent, "skipped: /dev/kvm is not present on this machine")

/// The interrupt-counting guest running on real KVM; the host reads its counters.
final class CountingGuest {
    let vm: TinyVM

    init(cpus: Int = 2) throws {
        vm = try TinyVM(.init(cpus: cpus))
        try vm.load(GuestProgram.interruptCounter.image)
        vm.start()
        let ready = vm.waitUntil(timeout: .seconds(20)) {
            (0..<cpus).allSatisfy { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: $0)) == 1 }
        }
        guard ready else { throw NotReady() }
    }

    deinit {
        vm.stop()
        vm.wait()
    }

    struct NotReady: Error {}

    /// Interrupts of `vector` taken by `cpu`.
    func count(cpu: Int, vector: UInt8) -> UInt32 {
        vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: vector))
    }

    /// Waits until `cpu` has taken `vector` at least `count` times.
    func waitFor(cpu: Int, vector: UInt8, count: UInt32, timeout: Duration = .seconds(10)) -> Bool {
        vm.waitUntil(timeout: timeout) { self.count(cpu: cpu, vector: vector) >= count }
    }

    /// Long enough (thousands of times the delivery latency here) for a wrong
    /// delivery to show, for checks that something did NOT arrive.
    func settle() { usleep(50_000) }
}

/// The open-descriptor count once it has stopped changing: the previous
/// test's VM may still be closing (its vCPU threads release it after
/// `wait()` returned, much later under ThreadSanitizer).
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

/// Open descriptors of this process.
func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// Threads of this process.
func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}
#endif
