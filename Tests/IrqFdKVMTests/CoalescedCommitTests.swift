#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import IrqFdRelay
import KVM
import Synchronization
import KVMTestSupport
import TestSupport
import Testing

/// Coalesced (deferred) route commits on a real guest (<doc:RouteCommits>): routes
/// programmed one at a time share a push, are served by the relay until it
/// lands, and lose nothing and deliver nothing while masked.
@Suite(needsKVM) struct CoalescedCommitTests {
    /// A coalescing KVM partition on `guest`'s VM, served by a KVM_SIGNAL_MSI relay.
    static func coalescingPartition(
        _ guest: CountingGuest, delay: Duration, threshold: Int = 512, errors: ErrorLog? = nil
    ) throws -> KVMIrqFd {
        let relay = try RelayIrqFd(vm: guest.vm.vm)
        let kernel = try KVMRoutingKernel(vm: guest.vm.vm)
        let sink = errors
        return KVMIrqFd(
            kernel: kernel,
            coalescing: .init(
                interim: relay, timer: ThreadCommitTimer(), delay: delay, threshold: threshold,
                onCommitError: { e in sink?.errors.withLock { $0.append(e) } }))
    }

    /// Commit errors reported to `onCommitError`.
    final class ErrorLog: Sendable {
        let errors = Mutex<[IrqFdError]>([])
    }

    static func vector(_ i: Int) -> UInt8 { UInt8(0x30 + i % 0xC0) }

    /// A thread that signals `routes` round-robin until stopped.
    final class Flood: Sendable {
        let stop = Atomic<Bool>(false)
        let stopped = Atomic<Bool>(false)
        init(_ events: [any Event]) {
            let thread = Thread { [self] in
                while !self.stop.load(ordering: .acquiring) {
                    for event in events { event.signal() }
                }
                self.stopped.store(true, ordering: .releasing)
            }
            thread.start()
        }
        func end() {
            stop.store(true, ordering: .releasing)
            while !stopped.load(ordering: .acquiring) { usleep(1000) }
        }
    }

    @Test func twoThousandRoutesProgrammedOneAtATimeShareAFewPushesAndEachDelivers() throws {
        let guest = try CountingGuest(cpus: 1)
        // A bound long enough that the threshold (512), not the timer, makes most
        // pushes even under ThreadSanitizer, where 2048 calls take far longer than 2 ms.
        let irqfd = try Self.coalescingPartition(guest, delay: .milliseconds(100))
        let routes = try (0..<2048).map { _ in try irqfd.newRoute() }
        let before = guest.counters.snapshot
        for (i, route) in routes.enumerated() {
            try route.setMsiDeferred(MsiMessage(destination: 0, vector: Self.vector(i)))
        }
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { irqfd.waitingEntryCount == 0 })
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { routes.allSatisfy { $0.isArmed && !$0.isServed } })
        let delta = guest.counters.snapshot - before
        #expect(delta.routingPushes <= 8, "one push per vector would be 2048: \(delta)")
        #expect(irqfd.pushedEntries.count == 2048)
        // Distinct vectors at a time: two pending interrupts of one vector are one in the APIC.
        for start in stride(from: 0, to: 2048, by: 0xC0) {
            let chunk = start..<min(start + 0xC0, 2048)
            let counts = chunk.map { guest.count(cpu: 0, vector: Self.vector($0)) }
            for i in chunk { routes[i].event.signal() }
            for (k, i) in chunk.enumerated() {
                #expect(guest.waitFor(cpu: 0, vector: Self.vector(i), count: counts[k] + 1), "route \(i) delivers")
            }
        }
        guest.settle()
        #expect(guest.total == 2048)
        guest.expectAlive()
    }

    @Test func aFloodRacingOneAtATimeUnmasksAndMasksLosesNothingAndDeliversNothingWhileMasked() throws {
        let guest = try CountingGuest(cpus: 1)
        // A long bound, so that unmasked routes are served by the relay for a while.
        let irqfd = try Self.coalescingPartition(guest, delay: .milliseconds(300))
        let count = 96
        let routes = try (0..<count).map { _ in try irqfd.newRoute() }
        for route in routes { try route.mask() }
        for (i, route) in routes.enumerated() {
            try route.setMsiDeferred(MsiMessage(destination: 0, vector: Self.vector(i)))
        }
        var flood = Flood(routes.map(\.event))
        var servedSeen = 0
        for route in routes {
            try route.unmask()
            if route.isServed { servedSeen += 1 }
        }
        #expect(servedSeen > 0, "some routes were served by the relay while their entry waited")
        flood.end()
        // Lossless: a signal after the flood reaches every vector, served or armed.
        var counts = (0..<count).map { guest.count(cpu: 0, vector: Self.vector($0)) }
        for route in routes { route.event.signal() }
        for i in 0..<count {
            #expect(guest.waitFor(cpu: 0, vector: Self.vector(i), count: counts[i] + 1), "vector \(i) lost its signal")
        }
        // Mask one at a time while the flood runs again (some may still be served).
        flood = Flood(routes.map(\.event))
        for route in routes { try route.mask() }
        // An interrupt injected before mask() returned may still be on its way
        // through the (emulated) guest: count once the handlers have gone quiet.
        counts = Self.quietCounts(guest, count)
        usleep(400_000)  // past the commit bound: the push lands while every route is masked
        flood.end()
        guest.settle()
        for i in 0..<count {
            #expect(guest.count(cpu: 0, vector: Self.vector(i)) == counts[i], "vector \(i) was delivered while masked")
        }
        #expect(routes.allSatisfy { !$0.isArmed && !$0.isServed })
        // What latched while masked arrives once on unmask (one interrupt per pending bit).
        for route in routes { try route.unmask() }
        for i in 0..<count {
            #expect(
                guest.waitFor(cpu: 0, vector: Self.vector(i), count: counts[i] + 1),
                "vector \(i) lost what latched while masked")
        }
        let after = Self.quietCounts(guest, count)
        for i in 0..<count { #expect(after[i] == counts[i] + 1) }
        guest.expectAlive()
    }

    /// The guest's per-vector counts once two readings 100 ms apart agree (at most 5 s).
    static func quietCounts(_ guest: CountingGuest, _ count: Int) -> [UInt32] {
        var last = (0..<count).map { guest.count(cpu: 0, vector: vector($0)) }
        for _ in 0..<50 {
            usleep(100_000)
            let now = (0..<count).map { guest.count(cpu: 0, vector: vector($0)) }
            if now == last { return now }
            last = now
        }
        return last
    }

    /// A coalesced commit whose push (KVM_SET_GSI_ROUTING), or whose arms
    /// once the push has landed (KVM_IRQFD), are refused three times: every
    /// vector stays served (none of its signals is lost), the failure is
    /// reported, and it is retried until every route is armed. A failed arm
    /// retries the arm, not the push.
    @Test(arguments: ["KVM_SET_GSI_ROUTING", "KVM_IRQFD"])
    func aCommitWhosePushOrArmFailsOnPurposeLeavesEveryVectorServedAndIsReportedAndRetried(failing call: String) throws
    {
        let guest = try CountingGuest(cpus: 1)
        let errors = ErrorLog()
        // 100 ms: the 16 changes share one commit even under ThreadSanitizer.
        let irqfd = try Self.coalescingPartition(guest, delay: .milliseconds(100), errors: errors)
        let routes = try (0..<16).map { _ in try irqfd.newRoute() }
        guest.vm.vm.faults.failCall(call, count: 3, errno: .ioError)
        for (i, route) in routes.enumerated() {
            try route.setMsiDeferred(MsiMessage(destination: 0, vector: Self.vector(i)))
        }
        #expect(routes.allSatisfy { $0.isServed })
        for route in routes { route.event.signal() }
        for i in 0..<16 {
            #expect(guest.waitFor(cpu: 0, vector: Self.vector(i), count: 1), "served while the entry waits")
        }
        #expect(
            guest.vm.waitUntil(timeout: .seconds(10)) { errors.errors.withLock { $0.count } >= 1 },
            "the failure is reported")
        let reported = errors.errors.withLock { $0 }
        #expect(reported.allSatisfy { "\($0)".contains(call) }, "\(reported)")
        for route in routes { route.event.signal() }
        for i in 0..<16 {
            #expect(guest.waitFor(cpu: 0, vector: Self.vector(i), count: 2), "served or armed after the failure")
        }
        // The retries land once the faults are spent.
        #expect(
            guest.vm.waitUntil(timeout: .seconds(10)) { routes.allSatisfy { $0.isArmed && !$0.isServed } },
            "the retries arm every route")
        #expect(irqfd.pushedEntries.count == 16 && irqfd.lastCommitError == nil)
        if call == "KVM_IRQFD" { #expect(irqfd.pushCount == 1, "the arms were retried, not the push") }
        for route in routes { route.event.signal() }
        for i in 0..<16 { #expect(guest.waitFor(cpu: 0, vector: Self.vector(i), count: 3), "armed after the retries") }
        guest.settle()
        #expect(guest.total == 48)
        guest.vm.vm.faults.clear()
        guest.expectAlive()
    }

    @Test func droppingManyRoutesOneAtATimeCoalescesTheirPushes() throws {
        let guest = try CountingGuest(cpus: 1)
        let irqfd = try Self.coalescingPartition(guest, delay: .milliseconds(20))
        let free = irqfd.freeGsiCount
        var routes = try (0..<1024).map { _ in try irqfd.newRoute() }
        try irqfd.withBatch { () throws(IrqFdError) in
            for (i, route) in routes.enumerated() {
                try route.setMsi(MsiMessage(destination: 0, vector: Self.vector(i)))
            }
        }
        let before = guest.counters.snapshot
        while !routes.isEmpty { routes.removeLast() }
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { irqfd.pushedEntries.isEmpty })
        let delta = guest.counters.snapshot - before
        // Pushes are bounded by time (one per 20 ms at most, plus one per 512 drops), not by count:
        // uncoalesced this is 1024.
        #expect(delta.routingPushes <= 64 && delta.irqfdDeassigns == 1024, "\(delta)")
        #expect(irqfd.freeGsiCount == free)
    }
}
#endif
