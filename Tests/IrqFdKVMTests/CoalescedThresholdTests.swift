#if os(Linux)
import IrqFdCore
import IrqFdKVM
import KVM
import KVMFaultInjection
import KVMTestSupport
import TestSupport
import IrqFdRelay
import IrqFdRouting
import Synchronization
import Testing

/// A coalesced commit made at once waits for as many
/// changes as the kernel holds entries (at least `threshold`), so N changes
/// one at a time make about log2(N/threshold) + 1 pushes, each doubling the
/// table, instead of N/threshold pushes of a growing table.
@Suite(needsKVM) struct CoalescedThresholdTests {
    @Test func oneAtATimeChangesPushAtThresholdThenEachTimeTheTableDoubles() throws {
        let guest = try CountingGuest(cpus: 1)
        // A bound the test never reaches: only the threshold makes pushes here.
        let irqfd = try CoalescedCommitTests.coalescingPartition(guest, delay: .seconds(30), threshold: 64)
        let routes = try (0..<1024).map { _ in try irqfd.newRoute() }
        var pushedAt: [Int] = []
        for (i, route) in routes.enumerated() {
            let before = irqfd.pushCount
            try route.setMsiDeferred(MsiMessage(destination: 0, vector: CoalescedCommitTests.vector(i)))
            if irqfd.pushCount != before { pushedAt.append(i + 1) }
        }
        // 64 wait, then 64 more (the table holds 64), 128, 256, 512: a fixed threshold would push 16 times.
        #expect(pushedAt == [64, 128, 256, 512, 1024], "\(pushedAt)")
        #expect(irqfd.waitingEntryCount == 0 && irqfd.pushedEntries.count == 1024)
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { routes.allSatisfy { $0.isArmed && !$0.isServed } })
        for i in [0, 63, 64, 511, 1023] {
            let vector = CoalescedCommitTests.vector(i)
            let before = guest.count(cpu: 0, vector: vector)
            routes[i].event.signal()
            #expect(guest.waitFor(cpu: 0, vector: vector, count: before + 1), "route \(i) delivers through its irqfd")
        }
        guest.expectAlive()
    }

    /// An entry written a field at a time (address, then data, then the
    /// message it ends with, as a guest's MMIO writes make it) counts once
    /// towards the threshold: the pushes come at the same entry counts as for
    /// one change each. Counting writes, they came at 32, 64, 96, 144, 216,
    /// 324, 486 and 729 entries: 8 pushes where 5 do.
    @Test func anEntryWrittenAFieldAtATimeCountsOnceTowardsTheThreshold() throws {
        let guest = try CountingGuest(cpus: 1)
        let irqfd = try CoalescedCommitTests.coalescingPartition(guest, delay: .seconds(30), threshold: 64)
        let routes = try (0..<1024).map { _ in try irqfd.newRoute() }
        for route in routes { try route.mask() }
        var pushedAt: [Int] = []
        for (i, route) in routes.enumerated() {
            let before = irqfd.pushCount
            let final = MsiMessage(destination: 0, vector: CoalescedCommitTests.vector(i))
            try route.setMsiDeferred(MsiMessage(address: final.address, data: 0))
            try route.setMsiDeferred(MsiMessage(address: final.address, data: final.data & 0xFF00))
            try route.setMsiDeferred(final)
            if irqfd.pushCount != before { pushedAt.append(i + 1) }
        }
        // Each push lands on the first write of the entry that crosses the
        // threshold, so that entry's next two writes count towards the next one.
        #expect(pushedAt == [64, 127, 253, 505, 1009], "\(pushedAt)")
        #expect(irqfd.waitingEntryCount == 16)
        #expect(irqfd.commitNow() == nil && irqfd.waitingEntryCount == 0)
        #expect(
            routes.enumerated().allSatisfy { i, r in
                r.msi == MsiMessage(destination: 0, vector: CoalescedCommitTests.vector(i))
            })
        #expect(irqfd.pushedEntries.count == 1024)
    }

    /// A timer whose work runs only when the test says so.
    final class HeldTimer: CommitTimer {
        let held = Mutex<[@Sendable () -> Void]>([])
        func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) { held.withLock { $0.append(work) } }
        /// Runs (and forgets) everything held so far.
        func runHeld() {
            let work = held.withLock { h in
                defer { h = [] }
                return h
            }
            for w in work { w() }
        }
        var heldCount: Int { held.withLock { $0.count } }
    }

    /// A partition with a threshold of 64 and a held timer, and 64 routes given
    /// their MSIs deferred one at a time: the 64th call pushed at once.
    static func thresholdCrossed(_ guest: CountingGuest) throws -> (KVMIrqFd, HeldTimer, [KVMIrqFdRoute]) {
        let timer = HeldTimer()
        let irqfd = KVMIrqFd(
            kernel: try KVMRoutingKernel(vm: guest.vm.vm),
            coalescing: .init(
                interim: try RelayIrqFd(vm: guest.vm.vm), timer: timer, delay: .seconds(30), threshold: 64))
        let routes = try (0..<64).map { _ in try irqfd.newRoute() }
        for (i, route) in routes.enumerated() {
            try route.setMsiDeferred(MsiMessage(destination: 0, vector: CoalescedCommitTests.vector(i)))
        }
        return (irqfd, timer, routes)
    }

    /// The push made at once, in the caller, when the threshold is crossed
    /// leaves the arming of the routes it carried to the timer's thread: the
    /// caller (a guest's MMIO write) pays one push, not a KVM_IRQFD and an
    /// interim stop per carried route. Until then each carried route stays
    /// served, so its signals still arrive, and a route masked meanwhile
    /// stays unarmed. Before this, all 64 were armed inside the 64th call,
    /// and the first expectation below failed.
    @Test func aPushAtTheThresholdArmsItsRoutesOnTheTimersThreadAndTheyStayServedMeanwhile() throws {
        let guest = try CountingGuest(cpus: 1)
        let (irqfd, timer, routes) = try Self.thresholdCrossed(guest)
        #expect(irqfd.pushCount == 1 && irqfd.waitingEntryCount == 0, "the 64th change pushed at once")
        // The caller arms only its own route (its entry is live now).
        #expect(
            routes.dropLast().allSatisfy { !$0.isArmed && $0.isServed },
            "no other route was armed in the caller's thread")
        #expect(routes[63].isArmed && !routes[63].isServed)
        // Served meanwhile: a signal is delivered by the interim.
        let v0 = CoalescedCommitTests.vector(0)
        let before = guest.count(cpu: 0, vector: v0)
        routes[0].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: v0, count: before + 1), "a carried route is served until it is armed")
        // Masked before the arming runs: it stays unarmed, and its signal latches.
        try routes[5].mask()
        #expect(timer.heldCount >= 1)
        timer.runHeld()
        #expect(
            routes.enumerated().allSatisfy { i, r in i == 5 ? (!r.isArmed && !r.isServed) : (r.isArmed && !r.isServed) }
        )
        let v1 = CoalescedCommitTests.vector(1)
        let before1 = guest.count(cpu: 0, vector: v1)
        routes[1].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: v1, count: before1 + 1), "armed: delivered through its irqfd")
        let v5 = CoalescedCommitTests.vector(5)
        let before5 = guest.count(cpu: 0, vector: v5)
        routes[5].event.signal()
        try routes[5].unmask()
        #expect(guest.waitFor(cpu: 0, vector: v5, count: before5 + 1), "the latched signal arrives at unmask")
        guest.expectAlive()
    }
    /// A carried route whose KVM_IRQFD fails when it is armed is served
    /// again, so its signals still arrive (before, the interim had been
    /// stopped first and they only latched until some later reconcile).
    @Test func aCarriedRouteWhoseArmFailsIsServedAgain() throws {
        let guest = try CountingGuest(cpus: 1)
        let (_, timer, routes) = try Self.thresholdCrossed(guest)
        guest.vm.vm.faults.failCall("KVM_IRQFD", errno: .noMemory)
        timer.runHeld()
        #expect(!routes[0].isArmed && routes[0].isServed, "the first arm failed: served again")
        #expect(routes[1...].allSatisfy { $0.isArmed && !$0.isServed })
        let v0 = CoalescedCommitTests.vector(0)
        let before = guest.count(cpu: 0, vector: v0)
        routes[0].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: v0, count: before + 1), "delivered by the interim")
        guest.expectAlive()
    }
    /// A commit scheduled before the VM went away finds the partition gone:
    /// it is neither reported as a failure nor retried (rule 12). Before,
    /// every VM stopped with entries waiting logged a warning and kept a
    /// retry timer going.
    @Test func aCommitAfterTheVMIsGoneIsNeitherReportedNorRetried() throws {
        let errors = CoalescedCommitTests.ErrorLog()
        let timer = HeldTimer()
        var vm: VirtualMachine? = try KVMSystem().createVM()
        try vm!.createIrqchip()
        let irqfd = KVMIrqFd(
            kernel: try KVMRoutingKernel(vm: vm!),
            coalescing: .init(
                interim: try RelayIrqFd(vm: vm!), timer: timer, delay: .seconds(30),
                onCommitError: { e in errors.errors.withLock { $0.append(e) } }))
        let route = try irqfd.newRoute()
        try route.mask()
        try route.setMsiDeferred(MsiMessage(destination: 0, vector: 0x40))
        #expect(irqfd.waitingEntryCount == 1 && timer.heldCount == 1)
        vm = nil
        timer.runHeld()
        #expect(errors.errors.withLock { $0.isEmpty }, "\(errors.errors.withLock { $0 })")
        #expect(timer.heldCount == 0, "no retry scheduled")
        #expect(irqfd.commitNow() == nil)
        withExtendedLifetime(route) {}
    }
}
#endif
