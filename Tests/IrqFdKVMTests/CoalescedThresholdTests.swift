#if os(Linux)
import IrqFdCore
import IrqFdKVM
import KVM
import TestSupport
import Testing

/// Issue 11, item 2: a coalesced commit made at once waits for as many
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
}
#endif
