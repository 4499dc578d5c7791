#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import KVM
import KVMFaultInjection
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// The KVM backend against real guests: every check ends in an interrupt
/// the in-kernel APIC delivered (or did not) to a vCPU's handler.
@Suite(needsKVM) struct KVMRouteTests {
    @Test func aSignalWhileMaskedLatchesAndTheUnmaskDeliversIt() throws {
        let guest = try CountingGuest()
        let route = try guest.irqfd.newRoute()
        try route.setMsi(MsiMessage(destination: 1, vector: 0x50))
        try route.mask()
        route.event.signal()
        guest.settle()
        #expect(guest.count(cpu: 1, vector: 0x50) == 0, "nothing is delivered while masked")
        #expect(route.consumePending())
        #expect(!route.consumePending(), "pending is reported once")
        route.event.signal()
        route.event.signal()
        try route.unmask()
        #expect(guest.waitFor(cpu: 1, vector: 0x50, count: 1), "the unmask delivers the latched signal")
        guest.settle()
        #expect(guest.count(cpu: 1, vector: 0x50) == 1, "two latched signals are one interrupt (edge semantics)")
        route.event.signal()
        #expect(guest.waitFor(cpu: 1, vector: 0x50, count: 2), "the route is live again")
    }

    @Test func unchangedSetMsiMakesNoIoctlAndMaskUnmaskPushNoTable() throws {
        let guest = try CountingGuest(cpus: 1)
        let route = try guest.irqfd.newRoute()
        let msi = MsiMessage(destination: 0, vector: 0x60)
        try route.setMsi(msi)
        var before = guest.counters.snapshot
        for _ in 0..<100 { try route.setMsi(msi) }
        #expect((guest.counters.snapshot - before).total == 0, "no system call at all")
        before = guest.counters.snapshot
        try route.mask()
        try route.unmask()
        let delta = guest.counters.snapshot - before
        #expect(delta.routingPushes == 0 && delta.irqfdDeassigns == 1 && delta.irqfdAssigns == 1 && delta.total == 2)
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x60, count: 1))
    }

    @Test func programming2048RoutesInOneBatchPushesTheTableOnce() throws {
        let guest = try CountingGuest()
        var routes = try (0..<2048).map { _ in try guest.irqfd.newRoute() }
        let before = guest.counters.snapshot
        try guest.irqfd.withBatch { () throws(IrqFdError) in
            for (i, route) in routes.enumerated() {
                try route.setMsi(MsiMessage(destination: UInt32(i % 2), vector: UInt8(0x30 + i % 0xC0)))
            }
        }
        let delta = guest.counters.snapshot - before
        #expect(delta.routingPushes == 1)
        #expect(delta.irqfdAssigns == 2048)
        // The pushed table is real: the first and last routes deliver.
        routes[0].event.signal()
        routes[2047].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x30, count: 1))
        #expect(guest.waitFor(cpu: 1, vector: UInt8(0x30 + 2047 % 0xC0), count: 1))
        // Dropping them all inside a batch is one push too (2048 disarms, one table).
        let beforeDrop = guest.counters.snapshot
        try guest.irqfd.withBatch { () throws(IrqFdError) in routes.removeAll() }
        let dropDelta = guest.counters.snapshot - beforeDrop
        #expect(dropDelta.routingPushes == 1 && dropDelta.irqfdDeassigns == 2048)
        #expect(guest.irqfd.pushedEntries.isEmpty)
    }

    /// `tenThousandCreateDropCyclesLeakNeitherDescriptorsNorGsis` counts this process's descriptors:
    /// it runs in a process of its own.
    static let createDropCyclesFilter =
        #"IrqFdKVMTests.KVMRouteTests/tenThousandCreateDropCyclesLeakNeitherDescriptorsNorGsis"#
    @Test(notInOwnProcess) func tenThousandCreateDropCyclesLeakNeitherDescriptorsNorGsisInItsOwnProcess() throws {
        try runInOwnProcess(Self.createDropCyclesFilter)
    }

    @Test(inOwnProcess(Self.createDropCyclesFilter)) func tenThousandCreateDropCyclesLeakNeitherDescriptorsNorGsis()
        throws
    {
        let guest = try CountingGuest(cpus: 1)
        let freeBefore = guest.irqfd.freeGsiCount
        let descriptors = openDescriptors()
        for i in 0..<10_000 {
            let route = try guest.irqfd.newRoute()
            if i % 10 == 0 { try route.setMsi(MsiMessage(destination: 0, vector: 0x70)) }
            if i % 20 == 0 { try route.mask() }
        }
        let leaked = descriptorsLeaked(since: descriptors)
        #expect(leaked.isEmpty, "descriptors left open: \(leaked.sorted())")
        #expect(guest.irqfd.freeGsiCount == freeBefore)
        #expect(guest.irqfd.pushedEntries.isEmpty, "every entry was removed from the kernel's table")
    }

    @Test func exhaustingTheGsiSpaceIsATypedErrorAndEarlierRoutesStillDeliver() throws {
        let guest = try CountingGuest(cpus: 1)
        let capacity = guest.irqfd.gsiCapacity
        #expect(
            capacity == guest.vm.vm.checkExtension(.irqRouting) - 40, "KVM_CAP_IRQ_ROUTING less the 40 irqchip routes")
        var routes: [KVMIrqFdRoute] = []
        routes.reserveCapacity(capacity)
        for _ in 0..<capacity { routes.append(try guest.irqfd.newRoute()) }
        #expect(throws: IrqFdError.gsiExhausted(capacity: capacity)) { try guest.irqfd.newRoute() }
        #expect(Set(routes.map(\.gsi)).count == capacity && routes.allSatisfy { $0.gsi >= 24 })
        // A full table (every GSI routed) still pushes and delivers.
        try guest.irqfd.withBatch { () throws(IrqFdError) in
            for route in routes { try route.setMsi(MsiMessage(destination: 0, vector: 0x80)) }
        }
        routes[0].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x80, count: 1))
        routes[capacity - 1].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x80, count: 2))
        routes.removeLast()
        #expect(try guest.irqfd.newRoute().gsi == UInt32(24 + capacity - 1), "the freed GSI is handed out again")
        try guest.irqfd.withBatch { () throws(IrqFdError) in routes.removeAll() }
        #expect(guest.irqfd.freeGsiCount == capacity)
    }

    @Test func anUndeliverableAddressIsATypedErrorAndTheRouteStaysDisarmed() throws {
        let guest = try CountingGuest(cpus: 1)
        let route = try guest.irqfd.newRoute()
        try route.setMsi(MsiMessage(destination: 0, vector: 0x90))
        #expect(throws: IrqFdError.undeliverableAddress(0xFEC0_0000)) {
            try route.setMsi(address: 0xFEC0_0000, data: 0x91)
        }
        #expect(!route.isArmed && route.msi == nil)
        route.event.signal()
        guest.settle()
        #expect(guest.total(cpu: 0) == 0, "nothing was delivered")
        // The rest of the VM keeps working.
        let other = try guest.irqfd.newRoute()
        try other.setMsi(MsiMessage(destination: 0, vector: 0x92))
        other.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x92, count: 1))
    }

    @Test func aFailedIoctlLeavesTableAndRouteConsistentAndNamesTheCall() throws {
        let guest = try CountingGuest(cpus: 1)
        let route = try guest.irqfd.newRoute()
        let first = MsiMessage(destination: 0, vector: 0xA0)
        try route.setMsi(first)
        let table = guest.irqfd.pushedEntries

        guest.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", errno: .invalidArgument)
        #expect(throws: IrqFdError.call("KVM_SET_GSI_ROUTING", .invalidArgument)) {
            try route.setMsi(MsiMessage(destination: 0, vector: 0xA1))
        }
        #expect(route.msi == first && route.isArmed && guest.irqfd.pushedEntries == table)
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0xA0, count: 1), "the old route still delivers")

        guest.vm.vm.faults.failCall("KVM_IRQFD", errno: .noMemory)
        #expect(throws: IrqFdError.call("KVM_IRQFD", .noMemory)) { try route.mask() }
        #expect(!route.isMasked && route.isArmed)

        try route.mask()
        guest.vm.vm.faults.failCall("KVM_IRQFD", errno: .noMemory)
        #expect(throws: IrqFdError.call("KVM_IRQFD", .noMemory)) { try route.unmask() }
        #expect(route.isMasked && !route.isArmed)
        try route.unmask()
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0xA0, count: 2))

        let fresh = try guest.irqfd.newRoute()
        guest.vm.vm.faults.failCall("KVM_IRQFD", errno: .resourceBusy)
        #expect(throws: IrqFdError.call("KVM_IRQFD", .resourceBusy)) {
            try fresh.setMsi(MsiMessage(destination: 0, vector: 0xA2))
        }
        #expect(fresh.msi == nil && !fresh.isArmed && guest.irqfd.pushedEntries == table, "the entry is rolled back")
    }

    @Test func aRouteWhoseVMIsGoneThrowsAndDropsQuietly() throws {
        var vm: TinyVM? = try TinyVM()
        let route = try vm!.irqfd.newRoute()
        try route.setMsi(MsiMessage(destination: 0, vector: 0x40))
        weak let weakVM = vm!.vm
        vm = nil
        #expect(weakVM == nil, "nothing but the TinyVM kept the VM alive")
        #expect(throws: IrqFdError.partitionGone) { try route.setMsi(MsiMessage(destination: 0, vector: 0x41)) }
        #expect(throws: IrqFdError.partitionGone) { try route.mask() }
        #expect(route.msi == MsiMessage(destination: 0, vector: 0x40))
        // Releasing the route now must not crash or touch a recycled descriptor number.
    }
}
#endif
