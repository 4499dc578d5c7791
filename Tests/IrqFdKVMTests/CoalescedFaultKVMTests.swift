#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import IrqFdRouting
import KVM
import KVMTestSupport
import KVMFaultInjection
import MSIX
import Synchronization
import TestSupport
import Testing

/// Coalesced commits under failures on a real guest, with the MSI-X
/// emulator where a device is involved: no vector is left deaf (live, but
/// neither armed nor served: its signals go nowhere), no error report runs
/// under a device's lock or reaches the wrong device, failed arms are retried
/// once per route, and the waiting list stays bounded while pushes fail.
/// Each test holds the commit timer, so what runs when is the test's choice.
@Suite(needsKVM) struct CoalescedFaultKVMTests {
    typealias HeldTimer = CoalescedThresholdTests.HeldTimer

    /// A coalescing partition on `guest`'s VM, relay-served, with a held timer.
    static func partition(
        _ guest: CountingGuest, timer: HeldTimer, threshold: Int = 512,
        onCommitError: @escaping @Sendable (IrqFdError) -> Void = { _ in }
    ) throws -> KVMIrqFd {
        KVMIrqFd(
            kernel: try KVMRoutingKernel(vm: guest.vm.vm),
            coalescing: .init(
                interim: LazyRelayInterim(vm: guest.vm.vm), timer: timer, delay: .milliseconds(50),
                threshold: threshold,
                onCommitError: onCommitError))
    }

    /// A fresh guest and a coalescing partition on it (held timer) whose
    /// commit errors are collected in `Reports`.
    static func reportingPartition() throws -> (CountingGuest, HeldTimer, Reports, KVMIrqFd) {
        let guest = try CountingGuest(cpus: 1)
        let timer = HeldTimer()
        let reports = Reports()
        return (guest, timer, reports, try partition(guest, timer: timer) { reports.report($0) })
    }

    /// A route on a fresh guest's coalescing partition (held timer) whose
    /// message, vector 0x51, waits for a commit: relay-served, not armed.
    static func waitingRoute() throws -> (CountingGuest, HeldTimer, KVMIrqFd, KVMIrqFdRoute) {
        let guest = try CountingGuest(cpus: 1)
        let timer = HeldTimer()
        let irqfd = try partition(guest, timer: timer)
        let route = try irqfd.newRoute()
        try route.setMsiDeferred(message(0x51))
        return (guest, timer, irqfd, route)
    }

    /// An MSI-X function over `irqfd`, programmed the way a guest driver does.
    struct Function {
        let emulator: MsixEmulator
        init(_ irqfd: KVMIrqFd, vectors: Int = 2) {
            emulator = MsixEmulator(layout: MsixLayout(vectorCount: vectors)!, delivery: .irqfd(irqfd))
        }
        func program(_ v: Int, _ message: MsiMessage) { emulator.program(v, message) }
        func setMasked(_ v: Int, _ masked: Bool) { emulator.setMasked(v, masked) }
        func control(enabled: Bool, functionMasked: Bool) {
            emulator.control(enabled: enabled, functionMasked: functionMasked)
        }
        func route(_ v: Int) -> KVMIrqFdRoute? { emulator.route(v) as? KVMIrqFdRoute }
    }

    /// Errors reported to `onCommitError`.
    final class Reports: Sendable {
        let errors = Mutex<[IrqFdError]>([])
        func report(_ error: IrqFdError) { errors.withLock { $0.append(error) } }
        var count: Int { errors.withLock { $0.count } }
    }

    static func message(_ vector: UInt8) -> MsiMessage { MsiMessage(destination: 0, vector: vector) }

    /// Signals `v` and expects the guest to take vector `idt` once more.
    static func expectDelivered(
        _ guest: CountingGuest, _ f: Function, _ v: Int, _ idt: UInt8, _ label: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let before = guest.count(cpu: 0, vector: idt)
        f.emulator.signal(vector: v)
        #expect(
            guest.waitFor(cpu: 0, vector: idt, count: before + 1, timeout: .seconds(3)), "\(label)",
            sourceLocation: sourceLocation)
    }

    /// Runs the held timer's work until `done` holds (at most `rounds` times).
    static func runUntil(_ timer: HeldTimer, rounds: Int = 6, _ done: () -> Bool) -> Bool {
        for _ in 0..<rounds {
            if done() { return true }
            timer.runHeld()
        }
        return done()
    }

    /// The guest unmasks the function while its vectors' entries wait for a
    /// commit and the push fails: both vectors are served by the relay until
    /// a retried commit lands, then armed. Before, the batch's push failed,
    /// its error path gave each live vector its (unchanged) message with
    /// `setMsi`, which stopped the relay without pushing or arming: 0 of 2
    /// signals arrived.
    @Test func aFunctionUnmaskWhoseCommitFailsLeavesNoVectorDeaf() throws {
        let guest = try CountingGuest(cpus: 1)
        let timer = HeldTimer()
        let irqfd = try Self.partition(guest, timer: timer)
        let f = Function(irqfd)
        f.control(enabled: true, functionMasked: true)
        for v in 0..<2 {
            f.program(v, Self.message(UInt8(0x50 + v)))
            f.setMasked(v, false)
        }
        #expect(irqfd.waitingEntryCount == 2, "routed early: the entries wait for a commit")
        guest.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", count: 2)
        f.control(enabled: true, functionMasked: false)
        #expect((0..<2).allSatisfy { f.emulator.isLive($0) })
        for v in 0..<2 {
            Self.expectDelivered(guest, f, v, UInt8(0x50 + v), "vector \(v) delivers while its entry waits")
        }
        #expect(irqfd.invariantViolations().isEmpty, "\(irqfd.invariantViolations())")
        #expect(
            Self.runUntil(timer) { (0..<2).allSatisfy { f.route($0)?.isArmed == true } },
            "the retried commit armed both")
        for v in 0..<2 { Self.expectDelivered(guest, f, v, UInt8(0x50 + v), "vector \(v) delivers once armed") }
        #expect(irqfd.invariantViolations().isEmpty)
        guest.vm.vm.faults.clear()
        guest.expectAlive()
    }

    /// A route served while its entry waits gets `setMsi` with a new
    /// message, and its KVM_IRQFD fails: the entry goes back, and the route
    /// is served again and its arm retried. Before, the relay had been
    /// stopped and the rolled-back entry was live in the kernel, so nothing
    /// ever reconciled it: 0 of 1 signals arrived, and nothing was pending.
    @Test func aFailedArmOfAServedRouteLeavesItServedAndRetried() throws {
        let (guest, timer, irqfd, route) = try Self.waitingRoute()
        guest.vm.vm.faults.failCall("KVM_IRQFD", count: 1)
        #expect(throws: IrqFdError.self) { try route.setMsi(Self.message(0x52)) }
        #expect(route.msi == Self.message(0x51) && route.isServed && !route.isArmed)
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x51, count: 1, timeout: .seconds(3)), "served with its entry")
        #expect(irqfd.pendingRetryCount == 1)
        #expect(Self.runUntil(timer) { route.isArmed }, "the retry armed it")
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x51, count: 2, timeout: .seconds(3)), "armed")
        #expect(irqfd.invariantViolations().isEmpty)
        guest.expectAlive()
    }

    /// Whether the recursive-lock case runs in this process (see below).
    static let reportUnderLockFilter =
        #"IrqFdKVMTests.CoalescedFaultKVMTests/aFailedArmCarriedByAGuestWriteIsReportedToEveryDeviceOutsideItsLock"#

    @Test(notInOwnProcess) func aFailedArmCarriedByAGuestWriteIsReportedToEveryDeviceOutsideItsLockInItsOwnProcess()
        throws
    {
        try runInOwnProcess(Self.reportUnderLockFilter)
    }

    /// A guest writes an undeliverable address to a live vector of device 1;
    /// that write's push carries waiting entries of device 1's other vector
    /// and of device 2, whose KVM_IRQFD then fails. Both devices' emulators
    /// hear about it through the `CommitErrorReporter`, later, on the timer's
    /// thread. Before, the failure was reported inside the write, under
    /// device 1's lock, and its report took that lock again: the process died
    /// with "Recursive call to lock Mutex" (and two devices doing this to each
    /// other deadlocked). It runs in a process of its own, so that a crash
    /// fails this test and not the whole run.
    @Test(inOwnProcess(Self.reportUnderLockFilter))
    func aFailedArmCarriedByAGuestWriteIsReportedToEveryDeviceOutsideItsLock() throws {
        let guest = try CountingGuest(cpus: 1)
        let timer = HeldTimer()
        let reporter = CommitErrorReporter()
        let reports = Reports()
        let irqfd = try Self.partition(guest, timer: timer) { error in
            reports.report(error)
            reporter.report(error)
        }
        let d1 = Function(irqfd)
        let d2 = Function(irqfd)
        reporter.add(d1.emulator)
        reporter.add(d2.emulator)
        d1.control(enabled: true, functionMasked: false)
        d2.control(enabled: true, functionMasked: false)
        d1.program(0, Self.message(0x50))
        d1.setMasked(0, false)
        irqfd.commitNow()
        timer.runHeld()
        #expect(d1.route(0)?.isArmed == true, "device 1's vector 0 is live and armed")
        d1.program(1, Self.message(0x51))
        d1.setMasked(1, false)
        d2.program(0, Self.message(0x52))
        d2.setMasked(0, false)
        #expect(irqfd.waitingEntryCount == 2)
        // The write's own disarm goes through; the arms of the routes its push carries fail.
        guest.vm.vm.faults.failCall("KVM_IRQFD", after: 1, count: 4)
        d1.emulator.writeTable(offset: 0, size: 4, value: 0xFED0_0000)
        #expect(irqfd.waitingEntryCount == 0, "the write's push carried both waiting entries")
        #expect(reports.count == 0, "nothing reported inside the write")
        #expect(Self.runUntil(timer) { reports.count >= 1 }, "the failed arm is reported")
        #expect(d1.emulator.counters.routeErrors >= 1 && d2.emulator.counters.routeErrors >= 1, "every device heard")
        // Served meanwhile, then armed by the retry.
        Self.expectDelivered(guest, d1, 1, 0x51, "device 1's vector 1 is served")
        Self.expectDelivered(guest, d2, 0, 0x52, "device 2's vector 0 is served")
        #expect(irqfd.invariantViolations().isEmpty, "\(irqfd.invariantViolations())")
        guest.vm.vm.faults.clear()
        #expect(Self.runUntil(timer) { d1.route(1)?.isArmed == true && d2.route(0)?.isArmed == true })
        Self.expectDelivered(guest, d2, 0, 0x52, "device 2's vector 0 is armed")
        guest.expectAlive()
    }

    /// Device 1's restore retargets its live vector in one batch, whose push
    /// also carries device 2's waiting entry; that route's KVM_IRQFD fails.
    /// Device 1's change landed: its restore succeeds and counts no route
    /// error; device 2's failure is reported and retried. Before, the error
    /// was thrown at device 1's restore and counted on device 1, and device
    /// 2's route was never retried.
    @Test func aBatchThatCarriedAnotherDevicesEntryDoesNotTakeItsArmError() throws {
        let (guest, timer, reports, irqfd) = try Self.reportingPartition()
        let d1 = Function(irqfd, vectors: 1)
        let d2 = Function(irqfd, vectors: 1)
        d2.control(enabled: true, functionMasked: false)
        d2.program(0, Self.message(0x52))
        d2.setMasked(0, false)
        d1.program(0, Self.message(0x50))
        d1.setMasked(0, false)
        d1.control(enabled: true, functionMasked: false)
        _ = Self.runUntil(timer) { d1.route(0)?.isArmed == true && d2.route(0)?.isArmed == true }
        // Device 2's vector takes a new message: it waits, served.
        d2.program(0, Self.message(0x53))
        #expect(irqfd.waitingEntryCount == 1 && d2.route(0)?.isServed == true)
        var saved = d1.emulator.save()
        saved = MsixSavedState(
            enabled: true, functionMasked: false,
            entries: [
                .init(addressLow: UInt32(Self.message(0x54).address), data: Self.message(0x54).data, vectorControl: 0)
            ],
            pendingBits: saved.pendingBits)
        guest.vm.vm.faults.failCall("KVM_IRQFD", count: 1)
        try d1.emulator.restore(saved)
        #expect(d1.emulator.counters.routeErrors == 0 && d1.emulator.lastRouteError == nil, "device 1 is not told")
        #expect(d1.route(0)?.isArmed == true)
        #expect(Self.runUntil(timer) { reports.count >= 1 }, "device 2's failed arm is reported")
        Self.expectDelivered(guest, d2, 0, 0x53, "device 2's vector is served meanwhile")
        #expect(Self.runUntil(timer) { d2.route(0)?.isArmed == true }, "and retried")
        Self.expectDelivered(guest, d1, 0, 0x54, "device 1's retargeted vector")
        Self.expectDelivered(guest, d2, 0, 0x53, "device 2's vector, armed")
        #expect(irqfd.invariantViolations().isEmpty)
        guest.vm.vm.faults.clear()
        guest.expectAlive()
    }

    /// A route whose KVM_IRQFD keeps failing, carried by eight commits, has
    /// one retry pending and is reported once per retry round. Before, each
    /// commit started a retry chain of its own: eight retries and eight
    /// reports per delay.
    @Test func aRouteWhoseArmKeepsFailingIsRetriedOncePerDelay() throws {
        let (guest, timer, reports, irqfd) = try Self.reportingPartition()
        let route = try irqfd.newRoute()
        guest.vm.vm.faults.failCall("KVM_IRQFD", count: 1000)
        for i in 0..<8 {
            try route.setMsiDeferred(Self.message(UInt8(0x50 + i)))
            irqfd.commitNow()
        }
        #expect(irqfd.pendingRetryCount == 1)
        timer.runHeld()
        let reported = reports.count
        timer.runHeld()
        #expect(reports.count == reported + 1, "one report per round")
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x57, count: 1, timeout: .seconds(3)), "served meanwhile")
        guest.vm.vm.faults.clear()
        #expect(Self.runUntil(timer) { route.isArmed })
        guest.expectAlive()
    }

    /// A batch's `setMsi` takes over a GSI whose deferred entry waits, and the
    /// push fails: the waiting entry is kept and still served, and the commit
    /// pushes it. Before, the GSI went back to what the kernel held (none):
    /// the route had no MSI and was not served.
    @Test func aFailedBatchKeepsTheWaitingEntryItTookOver() throws {
        let (guest, timer, irqfd, route) = try Self.waitingRoute()
        guest.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", count: 1)
        #expect(throws: IrqFdError.self) {
            try irqfd.withBatch { () throws(IrqFdError) in try route.setMsi(Self.message(0x52)) }
        }
        #expect(route.msi == Self.message(0x51) && route.isServed)
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x51, count: 1, timeout: .seconds(3)), "served with the waiting entry")
        #expect(Self.runUntil(timer) { route.isArmed }, "the commit pushed it")
        #expect(irqfd.pushedEntries.map(\.msi) == [Self.message(0x51)])
        guest.expectAlive()
    }

    /// A guest alternating writes between two vectors' entries past the
    /// threshold while every push fails: the waiting list holds two GSIs,
    /// the failure is reported (to the device, through the reporter) like a
    /// timer commit's, and both vectors are served until a commit lands.
    /// Before, every write pushed again, its error swallowed, and the list
    /// grew by one GSI per write.
    @Test func alternatingWritesWhilePushesFailKeepTheWaitingListBoundedAndAreReported() throws {
        let guest = try CountingGuest(cpus: 1)
        let timer = HeldTimer()
        let reporter = CommitErrorReporter()
        let irqfd = try Self.partition(guest, timer: timer, threshold: 2) { reporter.report($0) }
        let f = Function(irqfd)
        reporter.add(f.emulator)
        f.control(enabled: true, functionMasked: false)
        for v in 0..<2 { f.setMasked(v, false) }
        guest.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", count: 1_000_000)
        for i in 0..<6000 {
            f.program(i % 2, Self.message(UInt8(0x50 + (i % 2) * 8 + (i / 2) % 8)))
        }
        #expect(irqfd.changedListCount <= 2, "\(irqfd.changedListCount) GSIs listed")
        #expect(Self.runUntil(timer) { reporter.count >= 1 }, "the failed push was reported")
        #expect(f.emulator.counters.routeErrors >= 1)
        Self.expectDelivered(guest, f, 0, 0x57, "vector 0 is served")
        Self.expectDelivered(guest, f, 1, 0x5F, "vector 1 is served")
        #expect(irqfd.invariantViolations().isEmpty)
        guest.vm.vm.faults.clear()
        #expect(Self.runUntil(timer) { f.route(0)?.isArmed == true && f.route(1)?.isArmed == true })
        guest.expectAlive()
    }
}
#endif
