#if os(Linux)
import CBenchFloor
import Foundation
import Glibc
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import IrqFdRouting
import KVM
import TinyVM

/// The route-programming section: for each N, making, retargeting and
/// dropping N routes in batches, making them one at a time (synchronous and
/// coalesced), each next to its C floor.
extension BenchRunner {
    /// Per-round times of the batched operations and their floors, paired by index.
    struct BatchedRounds {
        var batched: [Double] = [], retarget: [Double] = [], drop: [Double] = []
        var rawPush: [Double] = [], rawProgram: [Double] = [], dropFloor: [Double] = []
        var batchedPushes = 0, retargetPushes = 0, dropPushes = 0
    }

    /// Per-round times of N one-at-a-time `setMsiDeferred` calls on a coalescing
    /// partition, and of its three floors, paired by index.
    struct DeferredRounds {
        var deferred: [Double] = []
        /// One raw push of N entries.
        var rawPush: [Double] = []
        /// One push and N `KVM_IRQFD` assigns.
        var arm: [Double] = []
        /// As `arm`, each event also watched by epoll until its assign (as the routing core serves it).
        var served: [Double] = []
        var pushes = 0
    }

    static func programMessage(_ i: Int, generation: Int) -> MsiMessage {
        MsiMessage(destination: 0, vector: UInt8(0x80 + (i + generation) % 64))
    }

    func measureProgramming(_ guest: TinyVM) throws(BenchError) -> [BenchReport.Programming] {
        let sizes = options.programmingSizes + [guest.irqfd.gsiCapacity]
        var results: [BenchReport.Programming] = []
        for n in sizes {
            let reps = programmingRounds(n)
            let batched = try measureBatched(guest, n: n, rounds: reps)
            let oneByOne = try measureOneByOne(guest, n: n)
            let deferred = try measureDeferred(guest, n: n)
            results.append(Self.programming(n: n, rounds: reps, batched, oneByOne: oneByOne, deferred))
        }
        return results
    }

    /// Rounds of the batched operations at `n`. The target's N gets at least
    /// 3 even in a quick run, so its paired ratios (retarget, drop) have an interval.
    private func programmingRounds(_ n: Int) -> Int {
        guard n >= 1024 else { return options.programmingRepetitions * 3 }
        return n == Targets.programmingN ? max(3, options.programmingRepetitions) : options.programmingRepetitions
    }

    /// Batched create, two retargets and a batched drop of `n` routes per
    /// round, each next to its C floor. Library and C alternate within each
    /// round, so a slow spell of the machine (KVM_SET_GSI_ROUTING waits for
    /// an SRCU grace period, which here sometimes takes a 4 ms tick) lands on
    /// both alike.
    private func measureBatched(_ guest: TinyVM, n: Int, rounds: Int) throws(BenchError) -> BatchedRounds {
        let irqfd = guest.irqfd
        let counters = guest.vm.counters
        let vmfd = guest.vm.rawDescriptor
        let m = Self.programMessage(0, generation: 0)
        var r = BatchedRounds()
        var routes: [KVMIrqFdRoute] = []
        routes.reserveCapacity(n)
        for rep in 0..<rounds {
            progress("route programming: N = \(n), repetition \(rep + 1)/\(rounds)")
            var ns: UInt64 = 0
            settle()
            let p = bench_floor_program(vmfd, 24, UInt32(n), m.address, m.data, &ns)
            guard p == 0 else { throw .floor("programming \(n) routes", p) }
            r.rawProgram.append(Double(ns) / 1000)
            var rawFailure: Int32 = 0
            do throws(IrqFdError) {
                settle()
                var before = counters.snapshot
                var start = bench_floor_now_ns()
                try irqfd.withBatch { () throws(IrqFdError) in
                    for i in 0..<n {
                        let route = try irqfd.newRoute()
                        try route.setMsi(Self.programMessage(i, generation: 0))
                        routes.append(route)
                    }
                }
                r.batched.append(elapsedUs(since: start))
                r.batchedPushes = (counters.snapshot - before).routingPushes

                for generation in 1...2 {
                    // Paired: a retarget and a raw push each round, the first going
                    // first in one round and second in the next, so neither side
                    // always inherits the other's deferred kernel work.
                    // The floor's push replaces the table with entries the library does
                    // not know; the library's next push puts its whole kept table back.
                    func raw() {
                        settle()
                        let result = bench_floor_push_n(vmfd, 24, UInt32(n), m.address, m.data, &ns)
                        if result != 0 { rawFailure = result }
                        r.rawPush.append(Double(ns) / 1000)
                    }
                    if (rep + generation) % 2 == 0 { raw() }
                    settle()
                    before = counters.snapshot
                    start = bench_floor_now_ns()
                    try irqfd.withBatch { () throws(IrqFdError) in
                        for (i, route) in routes.enumerated() {
                            try route.setMsi(Self.programMessage(i, generation: generation))
                        }
                    }
                    r.retarget.append(elapsedUs(since: start))
                    r.retargetPushes = (counters.snapshot - before).routingPushes
                    if (rep + generation) % 2 == 1 { raw() }
                }

                settle()
                before = counters.snapshot
                start = bench_floor_now_ns()
                try irqfd.withBatch { () throws(IrqFdError) in routes.removeAll(keepingCapacity: true) }
                r.drop.append(elapsedUs(since: start))
                r.dropPushes = (counters.snapshot - before).routingPushes
                // Its floor, right after (paired): the same drop in C.
                settle()
                let d = bench_floor_drop(vmfd, 24, UInt32(n), m.address, m.data, &ns)
                if d != 0 { rawFailure = d }
                r.dropFloor.append(Double(ns) / 1000)
            } catch { throw .library("programming \(n) routes", error) }
            guard rawFailure == 0 else { throw .floor("KVM_SET_GSI_ROUTING of \(n) entries", rawFailure) }
        }
        return r
    }

    /// `n` routes made and programmed one at a time with synchronous `setMsi`:
    /// `n` pushes of a growing table, O(N²) by design, so one round is enough
    /// for big N. The median time and the pushes of the last round.
    private func measureOneByOne(_ guest: TinyVM, n: Int) throws(BenchError) -> (us: Double, pushes: Int) {
        let irqfd = guest.irqfd
        let counters = guest.vm.counters
        let rounds = n >= 1024 ? 1 : options.programmingRepetitions
        var times: [Double] = []
        var pushes = 0
        var routes: [KVMIrqFdRoute] = []
        routes.reserveCapacity(n)
        for rep in 0..<rounds {
            progress("route programming: N = \(n), one by one, repetition \(rep + 1)/\(rounds)")
            do throws(IrqFdError) {
                let before = counters.snapshot
                let start = bench_floor_now_ns()
                for i in 0..<n {
                    let route = try irqfd.newRoute()
                    try route.setMsi(Self.programMessage(i, generation: 0))
                    routes.append(route)
                }
                times.append(elapsedUs(since: start))
                pushes = (counters.snapshot - before).routingPushes
                try irqfd.withBatch { () throws(IrqFdError) in routes.removeAll(keepingCapacity: true) }
            } catch { throw .library("programming \(n) routes one by one", error) }
        }
        return (Self.median(times), pushes)
    }

    /// `n` one-at-a-time `setMsiDeferred` calls on a coalescing partition of
    /// the same VM, timed until every route is armed, each round after its
    /// three floors. The partition's pushes replace the table while it works;
    /// the main partition holds no routes now, and its next push restores its
    /// own entries.
    private func measureDeferred(_ guest: TinyVM, n: Int) throws(BenchError) -> DeferredRounds {
        let counters = guest.vm.counters
        let vmfd = guest.vm.rawDescriptor
        let m = Self.programMessage(0, generation: 0)
        var r = DeferredRounds()
        var floorFailure: Int32 = 0
        do throws(IrqFdError) {
            let relay = try RelayIrqFd(vm: guest.vm)
            let coalescing = KVMIrqFd(
                kernel: try KVMRoutingKernel(vm: guest.vm),
                coalescing: .init(interim: relay, timer: ThreadCommitTimer(), delay: .milliseconds(2)))
            var routes: [KVMIrqFdRoute] = []
            for _ in 0..<n { routes.append(try coalescing.newRoute()) }
            for rep in 0..<max(n == Targets.programmingN ? 3 : 1, options.programmingRepetitions / 2) {
                progress("route programming: N = \(n), deferred one by one, repetition \(rep + 1)")
                /// A floor's time in µs, after `settle()`; a failure is kept for the end.
                func floorUs(_ call: (inout UInt64) -> Int32) -> Double {
                    settle()
                    var ns: UInt64 = 0
                    let result = call(&ns)
                    if result != 0 { floorFailure = result }
                    return Double(ns) / 1000
                }
                // Its floors, paired: one raw push of N; the least a C VMM does here
                // (one push and N KVM_IRQFD assigns); the same served as the routing
                // core serves it (epoll ADD while waiting, DEL before the arm).
                r.rawPush.append(floorUs { bench_floor_push_n(vmfd, 24, UInt32(n), m.address, m.data, &$0) })
                r.arm.append(floorUs { bench_floor_arm(vmfd, 24, UInt32(n), m.address, m.data, &$0) })
                r.served.append(floorUs { bench_floor_arm_served(vmfd, 24, UInt32(n), m.address, m.data, &$0) })
                settle()
                let before = counters.snapshot
                let start = bench_floor_now_ns()
                for (i, route) in routes.enumerated() {
                    try route.setMsiDeferred(Self.programMessage(i, generation: rep + 1))
                }
                coalescing.commitNow()
                // Every route armed (carried routes are armed on the timer's thread), checked
                // from the last back so that waiting costs few route locks.
                while coalescing.waitingEntryCount > 0 || !routes.reversed().allSatisfy(\.isArmed) { usleep(50) }
                r.deferred.append(elapsedUs(since: start))
                r.pushes = (counters.snapshot - before).routingPushes
                try coalescing.withBatch { () throws(IrqFdError) in for route in routes { try route.clearMsi() } }
            }
            routes.removeAll()
        } catch { throw .library("programming \(n) routes deferred one by one", error) }
        guard floorFailure == 0 else { throw .floor("KVM_SET_GSI_ROUTING of \(n) entries", floorFailure) }
        return r
    }

    /// The report's row for `n`: medians, and each path paired with its floor round by round.
    private static func programming(
        n: Int, rounds: Int, _ b: BatchedRounds, oneByOne: (us: Double, pushes: Int), _ d: DeferredRounds
    ) -> BenchReport.Programming {
        var row = BenchReport.Programming(
            routes: n, batchedUs: median(b.batched), batchedPushes: b.batchedPushes,
            oneByOneUs: oneByOne.us, oneByOnePushes: oneByOne.pushes,
            rawPushUs: median(b.rawPush), rawProgramUs: median(b.rawProgram),
            retargetBatchedUs: median(b.retarget), retargetPushes: b.retargetPushes,
            dropBatchedUs: median(b.drop), dropPushes: b.dropPushes,
            retargetMinUs: b.retarget.min() ?? 0, rawPushMinUs: b.rawPush.min() ?? 0,
            repetitions: rounds, dropFloorUs: median(b.dropFloor), oneByOneDeferredUs: median(d.deferred),
            oneByOneDeferredPushes: d.pushes)
        row.retargetRatio = BenchReport.PairedRatio(path: b.retarget, floor: b.rawPush)
        row.dropRatio = BenchReport.PairedRatio(path: b.drop, floor: b.dropFloor)
        row.deferredRatio = BenchReport.PairedRatio(path: d.deferred, floor: d.rawPush)
        row.deferredRawPushUs = median(d.rawPush)
        row.deferredArmFloorUs = median(d.arm)
        row.deferredArmRatio = BenchReport.PairedRatio(path: d.deferred, floor: d.arm)
        row.deferredServedFloorUs = median(d.served)
        row.deferredServedRatio = BenchReport.PairedRatio(path: d.deferred, floor: d.served)
        return row
    }
}
#endif
