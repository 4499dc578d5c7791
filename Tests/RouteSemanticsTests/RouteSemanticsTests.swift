#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import IrqFdWHP
import KVM
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// A backend under test: how to make its partition on a running guest.
struct Backend: Sendable, CustomTestStringConvertible {
    let name: String
    let make: @Sendable (CountingGuest) throws -> Partition
    var testDescription: String { name }

    /// Every backend that can run on this machine.
    static let all: [Backend] = [
        Backend(name: "KVM irqfd") { guest in
            let irqfd = guest.vm.irqfd
            return Partition(owner: irqfd, newRoute: { try irqfd.newRoute() })
        },
        Backend(name: "relay (KVM_SIGNAL_MSI)") { guest in
            let relay = try RelayIrqFd(vm: guest.vm.vm)
            return Partition(owner: relay, newRoute: { try relay.newRoute() })
        },
        Backend(name: "WHP model, routes from newRoute()") { guest in
            let whp = try WHPIrqFd(modelOn: guest.vm.irqfd, vm: guest.vm.vm)
            return Partition(owner: whp, newRoute: { try whp.newRoute() })
        },
        Backend(name: "WHP model, direct triggers from newRoute(msi:)") { guest in
            let whp = try WHPIrqFd(modelOn: guest.vm.irqfd, vm: guest.vm.vm)
            return Partition(owner: whp, newRoute: { try whp.newRoute() }, newLiveRoute: { try whp.newRoute(msi: $0) })
        },
    ]
}

/// A partition of some backend, seen only through `IrqFd`/`IrqFdRoute`.
final class Partition {
    let owner: AnyObject
    let newRoute: () throws -> any IrqFdRoute
    let newLiveRoute: (MsiMessage) throws -> any IrqFdRoute

    init(
        owner: AnyObject, newRoute: @escaping () throws -> any IrqFdRoute,
        newLiveRoute: ((MsiMessage) throws -> any IrqFdRoute)? = nil
    ) {
        self.owner = owner
        self.newRoute = newRoute
        self.newLiveRoute =
            newLiveRoute ?? { msi in
                let route = try newRoute()
                try route.setMsi(msi)
                return route
            }
    }
}

/// The route semantics of the twelve rules (IrqFdCore's TheTwelveRules article), written once and run
/// against every backend that runs here, each ending in a real guest's
/// interrupt handler (or its absence).
@Suite(needsKVM) struct RouteSemanticsTests {
    @Test(arguments: Backend.all)
    func anMsiReachesItsVectorOnItsVCPUAndSetMsiRetargetsTheLiveRoute(_ backend: Backend) throws {
        let guest = try CountingGuest()
        let partition = try backend.make(guest)
        let route = try partition.newLiveRoute(MsiMessage(destination: 0, vector: 0x41))
        let event = route.event
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x41, count: 1))
        try route.setMsi(MsiMessage(destination: 1, vector: 0x42))
        route.event.signal()
        #expect(guest.waitFor(cpu: 1, vector: 0x42, count: 1))
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x41) == 1 && guest.count(cpu: 1, vector: 0x42) == 1)
        #expect(
            guest.count(cpu: 1, vector: 0x41) == 0 && guest.count(cpu: 0, vector: 0x42) == 0, "nothing landed elsewhere"
        )
        #expect(guest.total(cpu: 0) == 1 && guest.total(cpu: 1) == 1, "each interrupt landed once, where it was sent")
        #expect(route.event === event, "the event is the same object for the route's whole life")
        guest.expectAlive()
    }

    @Test(arguments: Backend.all)
    func aNewRouteHasNoMsiAndIsUnarmedAndKeepsAnEarlySignal(_ backend: Backend) throws {
        let guest = try CountingGuest(cpus: 1)
        let partition = try backend.make(guest)
        let route = try partition.newRoute()
        route.event.signal()
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x43) == 0, "unarmed: nothing is delivered")
        try route.setMsi(MsiMessage(destination: 0, vector: 0x43))
        #expect(
            guest.waitFor(cpu: 0, vector: 0x43, count: 1), "the latched signal is delivered once the route is armed")
    }

    @Test(arguments: Backend.all)
    func aSignalWhileMaskedIsNotDeliveredAndIsPendingExactlyOnce(_ backend: Backend) throws {
        let guest = try CountingGuest()
        let partition = try backend.make(guest)
        let route = try partition.newLiveRoute(MsiMessage(destination: 1, vector: 0x50))
        try route.mask()
        try route.mask()
        route.event.signal()
        route.event.signal()
        guest.settle()
        #expect(guest.count(cpu: 1, vector: 0x50) == 0, "nothing is delivered while masked")
        #expect(route.consumePending(), "the signals latched")
        #expect(!route.consumePending(), "pending is reported once")
        try route.unmask()
        guest.settle()
        #expect(guest.count(cpu: 1, vector: 0x50) == 0, "a consumed pending signal is not delivered again by unmask")
        route.event.signal()
        #expect(guest.waitFor(cpu: 1, vector: 0x50, count: 1), "live again after unmask")
    }

    @Test(arguments: Backend.all)
    func aSignalStillLatchedAtUnmaskIsDeliveredByTheUnmaskOnce(_ backend: Backend) throws {
        let guest = try CountingGuest()
        let partition = try backend.make(guest)
        let route = try partition.newLiveRoute(MsiMessage(destination: 1, vector: 0x51))
        try route.mask()
        for _ in 0..<3 { route.event.signal() }
        try route.setMsi(MsiMessage(destination: 0, vector: 0x52))  // a masked route can be retargeted
        guest.settle()
        #expect(guest.count(cpu: 1, vector: 0x51) == 0 && guest.count(cpu: 0, vector: 0x52) == 0)
        try route.unmask()
        #expect(
            guest.waitFor(cpu: 0, vector: 0x52, count: 1), "the unmask delivers the latched signal, to the new target")
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x52) == 1, "three latched signals are one interrupt (edge)")
        #expect(guest.count(cpu: 1, vector: 0x51) == 0)
        #expect(!route.consumePending(), "nothing is left pending")
    }

    @Test(arguments: Backend.all)
    func anUndeliverableAddressIsATypedErrorThatLeavesTheRouteDisarmed(_ backend: Backend) throws {
        let guest = try CountingGuest(cpus: 1)
        let partition = try backend.make(guest)
        let route = try partition.newLiveRoute(MsiMessage(destination: 0, vector: 0x53))
        let other = try partition.newLiveRoute(MsiMessage(destination: 0, vector: 0x54))
        #expect(throws: IrqFdError.undeliverableAddress(0xFEC0_0000)) {
            try route.setMsi(address: 0xFEC0_0000, data: 0x53)
        }
        route.event.signal()
        other.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x54, count: 1), "the rest of the VM keeps working")
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x53) == 0, "the route is disarmed")
        try route.setMsi(MsiMessage(destination: 0, vector: 0x53))
        #expect(guest.waitFor(cpu: 0, vector: 0x53, count: 1), "a good address re-arms it; the signal had latched")
    }

    @Test(arguments: Backend.all)
    func clearMsiStopsDeliveryAndSignalsLatchUntilTheNextSetMsi(_ backend: Backend) throws {
        let guest = try CountingGuest(cpus: 1)
        let partition = try backend.make(guest)
        let route = try partition.newLiveRoute(MsiMessage(destination: 0, vector: 0x55))
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x55, count: 1))
        try route.clearMsi()
        try route.clearMsi()
        route.event.signal()
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x55) == 1, "no delivery without an MSI")
        try route.setMsi(MsiMessage(destination: 0, vector: 0x56))
        #expect(guest.waitFor(cpu: 0, vector: 0x56, count: 1))
        #expect(guest.count(cpu: 0, vector: 0x55) == 1)
    }

    /// `droppingRoutesFreesEverythingOverManyCycles` counts this process's descriptors:
    /// it runs in a process of its own.
    static let droppingRoutesFilter =
        #"RouteSemanticsTests.RouteSemanticsTests/droppingRoutesFreesEverythingOverManyCycles"#
    @Test(notInOwnProcess) func droppingRoutesFreesEverythingOverManyCyclesInItsOwnProcess() throws {
        try runInOwnProcess(Self.droppingRoutesFilter)
    }

    @Test(inOwnProcess(Self.droppingRoutesFilter), arguments: Backend.all)
    func droppingRoutesFreesEverythingOverManyCycles(_ backend: Backend) throws {
        let guest = try CountingGuest(cpus: 1)
        let partition = try backend.make(guest)
        let freeGsis = guest.vm.irqfd.freeGsiCount
        let descriptors = openDescriptors()
        for i in 0..<2_000 {
            let route =
                try i % 4 == 0 ? partition.newRoute() : partition.newLiveRoute(MsiMessage(destination: 0, vector: 0x57))
            if i % 3 == 0 { try route.mask() }
            if i % 5 == 0 { route.event.signal() }
            if i % 7 == 0 { try route.clearMsi() }
        }
        #expect(guest.vm.irqfd.freeGsiCount == freeGsis, "every GSI came back")
        let leaked = descriptorsLeaked(since: descriptors)
        #expect(leaked.isEmpty, "descriptors left open: \(leaked.sorted())")
        let route = try partition.newLiveRoute(MsiMessage(destination: 0, vector: 0x58))
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x58, count: 1), "the partition still works")
        withExtendedLifetime(partition) {}
    }
}
#endif
