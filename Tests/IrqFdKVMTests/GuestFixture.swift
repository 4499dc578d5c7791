#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import KVM
import Testing
import TinyVM

let kvmPresent = FileManager.default.fileExists(atPath: "/dev/kvm")
/// Runs the test whenever /dev/kvm exists; otherwise skips it, saying why.
let needsKVM = Testing.ConditionTrait.enabled(if: kvmPresent, "skipped: /dev/kvm is not present on this machine")

/// A running interrupt-counting guest on real KVM: every vector it takes is
/// counted per vCPU in guest memory, which the host reads.
final class CountingGuest {
    let vm: TinyVM
    var irqfd: KVMIrqFd { vm.irqfd }
    var counters: IoctlCounters { vm.vm.counters }

    init(cpus: Int = 2) throws {
        vm = try TinyVM(.init(cpus: cpus))
        try vm.load(GuestProgram.interruptCounter.image)
        vm.start()
        let ready = vm.waitUntil(timeout: .seconds(20)) {
            (0..<cpus).allSatisfy { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: $0)) == 1 }
        }
        guard ready else { throw GuestNotReady(outcome: "\(vm.hasEnded ? "\(vm.wait())" : "still running")") }
    }

    deinit {
        vm.stop()
        vm.wait()
    }

    struct GuestNotReady: Error { var outcome: String }

    /// Interrupts of `vector` taken by `cpu`.
    func count(cpu: Int, vector: UInt8) -> UInt32 {
        vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: vector))
    }

    /// Interrupts taken by `cpu`, all vectors.
    func total(cpu: Int) -> UInt32 { vm.memory.read32(at: InterruptCounterLayout.total(cpu: cpu)) }

    /// Waits until `cpu` has taken `vector` at least `count` times.
    @discardableResult
    func waitFor(cpu: Int, vector: UInt8, count: UInt32, timeout: Duration = .seconds(10)) -> Bool {
        vm.waitUntil(timeout: timeout) { self.count(cpu: cpu, vector: vector) >= count }
    }

    /// Gives a wrongly armed route time to deliver (≈3000x the p50 latency here),
    /// for checks that something did NOT arrive.
    func settle() { usleep(50_000) }

    /// Fails the test with the guest's outcome if the guest stopped running.
    func expectAlive(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!vm.hasEnded, "guest ended: \(vm.hasEnded ? "\(vm.wait())" : "")", sourceLocation: sourceLocation)
    }
}

/// Open descriptors of this process (entries of /proc/self/fd).
func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}
#endif
