import IrqFdCore
import IrqFdRouting
import Testing

/// Coalesced commits under failures, call by call against a recording kernel:
/// no route is left deaf (live for its owner, neither armed nor served), no
/// error is reported on a caller's thread or thrown at a caller it is not
/// about, failed arms are retried once per route, and the waiting list stays
/// bounded. The same cases with a guest and the MSI-X emulator are in
/// IrqFdKVMTests (CoalescedFaultKVMTests).
@Suite struct CoalescedRouteFaultTests {
    static let msiA = MsiMessage(destination: 0, vector: 0x40)
    static let msiB = MsiMessage(destination: 1, vector: 0x41)
    static func msi(_ i: Int) -> MsiMessage { MsiMessage(destination: UInt32(i % 2), vector: UInt8(0x30 + i % 0xC0)) }

    @Test func setMsiWithTheMessageAlreadyWaitingPushesItAndArms() throws {
        let rig = CoalescingRig()
        let r = try rig.waitingRoute(Self.msiA)
        #expect(r.isServed && !r.isArmed && rig.partition.waitingEntryCount == 1)
        try r.setMsi(Self.msiA)
        #expect(r.isArmed && !r.isServed, "setMsi pushed the waiting entry and armed the route")
        #expect(rig.kernel.table[r.gsi] == Self.msiA && rig.partition.waitingEntryCount == 0)
        rig.expectInvariant()
    }

    @Test func aFailedArmInSetMsiLeavesAServedRouteServedAndRetriesItsArm() throws {
        let rig = CoalescingRig()
        let r = try rig.waitingRoute(Self.msiA)
        rig.kernel.failNext("assign")
        #expect(throws: IrqFdError.call("assign", .ioError)) { try r.setMsi(Self.msiB) }
        #expect(r.msi == Self.msiA, "rule 10: the entry is what it was")
        #expect(r.isServed && rig.interim.message(for: r.event) == Self.msiA, "served again, with its entry")
        rig.expectInvariant("after the failed arm")
        #expect(rig.partition.pendingRetryCount == 1, "its entry is in the kernel: no commit would reconcile it")
        rig.timer.runHeld()
        #expect(r.isArmed && !r.isServed, "the retry armed it")
        rig.expectInvariant("after the retry")
    }

    @Test func aFailedArmOfAWaitingEntryGivenAgainKeepsTheRouteServed() throws {
        let rig = CoalescingRig()
        let r = try rig.waitingRoute(Self.msiA)
        rig.kernel.failNext("assign")
        #expect(throws: IrqFdError.call("assign", .ioError)) { try r.setMsi(Self.msiA) }
        #expect(r.isServed && !r.isArmed)
        rig.expectInvariant()
        rig.timer.runHeld()
        #expect(r.isArmed && !r.isServed)
    }

    /// A push made for one caller carries another route's waiting entry, and
    /// that route's arm fails: the report runs later, on the timer's thread,
    /// never inside the caller's call (which may hold its own lock).
    @Test func noErrorIsReportedInsideTheCallWhosePushCarriedTheFailingRoute() throws {
        let rig = CoalescingRig()
        let (waiting, caller) = try rig.refusedWaitingRouteAndCaller(Self.msiA)
        try rig.log.inCall { () throws(IrqFdError) in try caller.setMsi(Self.msiB) }
        try rig.log.inCall { () throws(IrqFdError) in try caller.clearMsi() }
        _ = try rig.log.inCall { () throws(IrqFdError) in rig.partition.commitNow() }
        rig.timer.runHeld()
        rig.timer.runHeld()
        #expect(rig.log.count >= 1, "the failed arm was reported")
        #expect(rig.log.reportedDuringCall.load(ordering: .relaxed) == 0, "no report ran inside a caller's call")
        #expect(waiting.isServed && !waiting.isArmed)
        rig.expectInvariant()
    }

    /// A caller's batch whose push carried another route's waiting entry,
    /// whose arm then fails: the caller's own change landed and it gets no
    /// error; the other route's failure is reported and retried.
    @Test func aBatchDoesNotThrowTheArmErrorOfARouteItCarriedForOthers() throws {
        let rig = CoalescingRig()
        let (waiting, caller) = try rig.refusedWaitingRouteAndCaller(Self.msiA)
        try rig.partition.withBatch { () throws(IrqFdError) in try caller.setMsi(Self.msiB) }
        #expect(caller.isArmed && rig.kernel.table[waiting.gsi] == Self.msiA)
        rig.timer.runHeld()  // the carried route's arm (fails)
        rig.timer.runHeld()  // its report, and the first retry (fails)
        #expect(rig.log.count == 1 && waiting.isServed && rig.partition.pendingRetryCount == 1)
        rig.expectInvariant("while the arm is refused")
        rig.kernel.allowAssign(waiting.gsi)
        rig.timer.runHeld()
        #expect(waiting.isArmed && !waiting.isServed && rig.partition.pendingRetryCount == 0)
        rig.expectInvariant("after the retry")
    }

    /// A route whose KVM_IRQFD keeps failing, carried by eight commits: one
    /// retry is pending, not eight, and each retry reports once.
    @Test func aRouteWhoseArmKeepsFailingHasOneRetryHoweverManyCommitsCarryIt() throws {
        let rig = CoalescingRig()
        let r = try rig.partition.newRoute()
        rig.kernel.refuseAssign(r.gsi)
        for i in 0..<8 {
            try r.setMsiDeferred(Self.msi(i))
            rig.partition.commitNow()
            rig.expectInvariant("retarget \(i)")
        }
        #expect(rig.partition.pendingRetryCount == 1)
        rig.timer.runHeld()  // the commits scheduled, the reports so far, and the first retry round
        let reported = rig.log.count
        rig.timer.runHeld()  // that round's report, and the next round
        #expect(rig.log.count == reported + 1, "one report per retry round, not one per commit that carried it")
        #expect(rig.timer.delayedCount == 1, "one retry pending")
        rig.kernel.allowAssign(r.gsi)
        rig.timer.runHeld()
        #expect(r.isArmed && rig.partition.pendingRetryCount == 0)
    }

    /// A `setMsi` in a batch takes over a GSI whose deferred entry waits; the
    /// batch's push fails: the GSI goes back to the waiting entry, its route
    /// stays served with it, and the scheduled commit pushes it.
    @Test func aFailedBatchKeepsTheDeferredEntryItTookOver() throws {
        let rig = CoalescingRig()
        let r = try rig.waitingRoute(Self.msiA)
        rig.kernel.failNext("push")
        #expect(throws: IrqFdError.call("push", .ioError)) {
            try rig.partition.withBatch { () throws(IrqFdError) in try r.setMsi(Self.msiB) }
        }
        #expect(r.msi == Self.msiA && rig.partition.waitingEntryCount == 1)
        #expect(r.isServed && rig.interim.message(for: r.event) == Self.msiA, "served with the waiting entry again")
        rig.expectInvariant()
        rig.timer.runHeld()
        rig.timer.runHeld()
        #expect(rig.kernel.table[r.gsi] == Self.msiA && r.isArmed && !r.isServed)
    }

    /// 6,000 writes alternating between two routes past the threshold while
    /// every push fails: the waiting list holds two GSIs, the writes stop
    /// pushing after the first failure (the scheduled commit retries), and
    /// that failure is reported like a timer commit's.
    @Test func writesAlternatingWhilePushesFailKeepTheWaitingListBoundedAndAreReported() throws {
        let rig = CoalescingRig(threshold: 2)
        let a = try rig.partition.newRoute()
        let b = try rig.partition.newRoute()
        rig.kernel.refuse("push")
        var longest = 0
        for i in 0..<6000 {
            try (i % 2 == 0 ? a : b).setMsiDeferred(Self.msi(i))
            longest = max(longest, rig.partition.changedListCount)
        }
        #expect(longest == 2, "the waiting list grew to \(longest) GSIs")
        #expect(rig.partition.changedListCount == 2 && rig.partition.waitingEntryCount == 2)
        #expect(rig.kernel.attempts("push") == 1, "one push attempted inside the writes, not one per write")
        #expect(rig.partition.lastCommitError == .call("push", .ioError))
        rig.timer.runHeld()
        #expect(rig.log.count >= 1, "the failed push was reported")
        #expect(a.isServed && b.isServed)
        rig.expectInvariant("while pushes fail")
        rig.kernel.allow("push")
        rig.timer.runHeld()
        rig.timer.runHeld()
        #expect(a.isArmed && b.isArmed && rig.partition.changedListCount == 0)
        rig.expectInvariant("after the commit")
    }

    @Test func aFailedClearOfAServedRouteKeepsItServed() throws {
        let rig = CoalescingRig()
        let r = try rig.waitingRoute(Self.msiA)
        rig.kernel.failNext("push")
        #expect(throws: IrqFdError.call("push", .ioError)) { try r.clearMsi() }
        #expect(r.msi == Self.msiA && r.isServed)
        rig.expectInvariant()
    }
}
