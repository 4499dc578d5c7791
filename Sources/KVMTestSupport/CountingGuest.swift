#if os(Linux)
import Foundation
public import IrqFdKVM
package import KVM
public import Testing
public import TinyVM

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
#endif
