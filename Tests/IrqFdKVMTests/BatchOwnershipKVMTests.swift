#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import KVM
import Synchronization
import KVMTestSupport
import TestSupport
import Testing

/// On a real guest: a batch open on one thread does
/// not hold back another thread's routes, and a failed batch push leaves every
/// route delivering where it should (checked by the guest's handlers).
@Suite(needsKVM) struct BatchOwnershipKVMTests {
    /// Runs `body` while another thread holds a batch open on `guest`'s
    /// partition, in which it set `theirs` to vector 0x48; then arms `fault`
    /// (if any) and lets that batch end. Returns what the batch threw.
    func withBatchOpenElsewhere(
        _ guest: CountingGuest, theirs: KVMIrqFdRoute, fault: String?, _ body: () throws -> Void
    ) throws -> IrqFdError? {
        let opened = Atomic<Bool>(false)
        let end = Atomic<Bool>(false)
        let done = Atomic<Bool>(false)
        let outcome = Mutex<IrqFdError?>(nil)
        let irqfd = guest.irqfd
        let thread = Thread {
            do throws(IrqFdError) {
                try irqfd.withBatch { () throws(IrqFdError) in
                    try theirs.setMsi(MsiMessage(destination: 0, vector: 0x48))
                    opened.store(true, ordering: .releasing)
                    while !end.load(ordering: .acquiring) { usleep(1000) }
                }
            } catch {
                outcome.withLock { $0 = error }
            }
            done.store(true, ordering: .releasing)
        }
        thread.start()
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { opened.load(ordering: .acquiring) })
        try body()
        if let fault { guest.vm.vm.faults.failCall(fault, errno: .ioError) }
        end.store(true, ordering: .releasing)
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { done.load(ordering: .acquiring) })
        guest.vm.vm.faults.clear()
        return outcome.withLock { $0 }
    }

    @Test func aRouteProgrammedWhileAnotherThreadHoldsABatchDeliversAtOnceAndSurvivesThatBatchsFailedPush() throws {
        let guest = try CountingGuest(cpus: 1)
        let mine = try guest.irqfd.newRoute()
        let theirs = try guest.irqfd.newRoute()
        let error = try withBatchOpenElsewhere(guest, theirs: theirs, fault: "KVM_SET_GSI_ROUTING") {
            try mine.setMsi(MsiMessage(destination: 0, vector: 0x44))
            mine.event.signal()
            #expect(
                guest.waitFor(cpu: 0, vector: 0x44, count: 1, timeout: .seconds(5)),
                "delivered while the other batch is open")
        }
        #expect(error != nil, "the other batch's push failed and it was told")
        mine.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x44, count: 2), "the failed push did not undo this route")
        #expect(mine.isArmed && mine.msi == MsiMessage(destination: 0, vector: 0x44))
        theirs.event.signal()
        guest.settle()
        #expect(
            guest.count(cpu: 0, vector: 0x48) == 0 && !theirs.isArmed && theirs.msi == nil,
            "the failed batch's route is rolled back")
        guest.expectAlive()
    }

    @Test func aGsiRetakenInAFailedBatchNeverDeliversTheDroppedRoutesVector() throws {
        let guest = try CountingGuest(cpus: 1)
        var old: KVMIrqFdRoute? = try guest.irqfd.newRoute()
        try old!.setMsi(MsiMessage(destination: 0, vector: 0x45))
        var retaken: KVMIrqFdRoute?
        guest.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", errno: .ioError)
        #expect(throws: IrqFdError.self) {
            try guest.irqfd.withBatch { () throws(IrqFdError) in
                old = nil
                retaken = try guest.irqfd.newRoute()
                try retaken!.setMsi(MsiMessage(destination: 0, vector: 0x46))
                try retaken!.mask()
            }
        }
        guest.vm.vm.faults.clear()
        let route = try #require(retaken)
        try route.unmask()
        route.event.signal()
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x45) == 0, "the new route's signal ran the dropped route's vector")
        try route.setMsi(MsiMessage(destination: 0, vector: 0x46))
        #expect(
            guest.waitFor(cpu: 0, vector: 0x46, count: 1), "the latched signal arrives on the new route's own vector")
        guest.expectAlive()
    }

    @Test func aRouteThatClearedItsMsiInAFailedBatchStillDelivers() throws {
        let guest = try CountingGuest(cpus: 1)
        let route = try guest.irqfd.newRoute()
        try route.setMsi(MsiMessage(destination: 0, vector: 0x47))
        guest.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", errno: .ioError)
        #expect(throws: IrqFdError.self) {
            try guest.irqfd.withBatch { () throws(IrqFdError) in try route.clearMsi() }
        }
        guest.vm.vm.faults.clear()
        route.event.signal()
        #expect(
            guest.waitFor(cpu: 0, vector: 0x47, count: 1, timeout: .seconds(5)),
            "the route is armed on its restored entry")
        guest.expectAlive()
    }
}
#endif
