#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdWHP
import KVM
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// The WHP strategy on the KVM model of WHP's trigger API, delivering to a real guest.
@Suite(needsKVM) struct WHPStrategyTests {
    func partition(_ guest: CountingGuest) throws -> WHPIrqFd<KVMTriggerModel> {
        try WHPIrqFd(modelOn: guest.vm.irqfd, vm: guest.vm.vm)
    }

    @Test func aDirectRouteIsDeliveredByItsTriggerAndRetargetedLiveByUpdate() throws {
        let guest = try CountingGuest()
        let whp = try partition(guest)
        let route = try whp.newRoute(msi: MsiMessage(destination: 0, vector: 0x41))
        #expect(route.isDirect)
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x41, count: 1))
        let event = route.event
        try route.setMsi(MsiMessage(destination: 1, vector: 0x42))
        try route.setMsi(MsiMessage(destination: 1, vector: 0x42))
        #expect(route.event === event && route.isDirect)
        route.event.signal()
        #expect(guest.waitFor(cpu: 1, vector: 0x42, count: 1))
        let calls = whp.provider.statistics
        #expect(
            calls == .init(created: 1, updated: 1, deleted: 0, requested: 0),
            "the hypervisor delivered both; the relay never ran")
        #expect(whp.relay.statistics.injected == 0)
    }

    @Test func maskDeletesTheTriggerAndTheRelayKeepsPendingAndDeliversOnUnmask() throws {
        let guest = try CountingGuest()
        let whp = try partition(guest)
        let route = try whp.newRoute(msi: MsiMessage(destination: 1, vector: 0x50))
        try route.mask()
        #expect(!route.isDirect && whp.provider.statistics.deleted == 1)
        route.event.signal()
        guest.settle()
        #expect(guest.count(cpu: 1, vector: 0x50) == 0, "nothing is delivered while masked")
        #expect(route.consumePending())
        #expect(!route.consumePending())
        route.event.signal()
        try route.unmask()
        #expect(guest.waitFor(cpu: 1, vector: 0x50, count: 1), "the latched signal is delivered by the unmask")
        #expect(whp.provider.statistics.requested == 1, "through WHvRequestInterrupt")
        try route.setMsi(MsiMessage(destination: 0, vector: 0x51))
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x51, count: 1), "a relayed route retargets too")
    }

    @Test func aPlainNewRouteStartsRelayedUnarmedAndKeepsAnEarlySignal() throws {
        let guest = try CountingGuest()
        let whp = try partition(guest)
        let route = try whp.newRoute()
        #expect(!route.isDirect && route.msi == nil)
        #expect(whp.provider.statistics == .init(created: 1, updated: 0, deleted: 1, requested: 0))
        route.event.signal()
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x52) == 0)
        try route.setMsi(MsiMessage(destination: 0, vector: 0x52))
        #expect(guest.waitFor(cpu: 0, vector: 0x52, count: 1))
    }

    @Test func anUndeliverableMessageOnADirectRouteDisarmsItAndTheVMKeepsWorking() throws {
        let guest = try CountingGuest()
        let whp = try partition(guest)
        let route = try whp.newRoute(msi: MsiMessage(destination: 0, vector: 0x53))
        #expect(throws: IrqFdError.undeliverableAddress(0xFEF0_0000)) {
            try route.setMsi(address: 0xFEF0_0000, data: 0x53)
        }
        #expect(!route.isDirect && route.msi == nil)
        route.event.signal()
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x53) == 0)
        #expect(throws: IrqFdError.self) {
            try route.setMsi(MsiMessage(destination: 0, vector: 0x53, deliveryMode: .smi))
        }
        #expect(route.msi == nil)
        try route.setMsi(MsiMessage(destination: 0, vector: 0x53))
        #expect(
            guest.waitFor(cpu: 0, vector: 0x53, count: 1), "the latched signal is delivered once the route is armed")
        #expect(throws: IrqFdError.self) { try whp.newRoute(msi: MsiMessage(address: 0xFEF0_0000, data: 0)) }
    }

    /// `droppingRoutesInEitherModeFreesTriggersGsisAndDescriptors` counts this process's descriptors:
    /// it runs in a process of its own.
    static let droppingRoutesFilter =
        #"IrqFdWHPTests.WHPStrategyTests/droppingRoutesInEitherModeFreesTriggersGsisAndDescriptors"#
    @Test(notInOwnProcess) func droppingRoutesInEitherModeFreesTriggersGsisAndDescriptorsInItsOwnProcess() throws {
        try runInOwnProcess(Self.droppingRoutesFilter)
    }

    @Test(inOwnProcess(Self.droppingRoutesFilter)) func droppingRoutesInEitherModeFreesTriggersGsisAndDescriptors()
        throws
    {
        let guest = try CountingGuest()
        let whp = try partition(guest)
        let freeGsis = guest.vm.irqfd.freeGsiCount
        let descriptors = openDescriptors()
        for i in 0..<1_000 {
            let route =
                i % 2 == 0 ? try whp.newRoute(msi: MsiMessage(destination: 0, vector: 0x60)) : try whp.newRoute()
            if i % 3 == 0 { try route.mask() }
            if i % 4 == 0 { try route.setMsi(MsiMessage(destination: 1, vector: 0x61)) }
        }
        #expect(guest.vm.irqfd.freeGsiCount == freeGsis)
        let leaked = descriptorsLeaked(since: descriptors)
        #expect(leaked.isEmpty, "descriptors left open: \(leaked.sorted())")
    }
}
#endif
