#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import IrqFdRelay
import KVM
import KVMFaultInjection
import Synchronization
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// Counts the poller's system calls (epoll_ctl) while passing them to the real epoll poller.
final class CountingPoller: RelayPoller {
    let inner: EpollPoller
    let watches = Atomic<Int>(0)
    let unwatches = Atomic<Int>(0)
    init() throws { inner = try EpollPoller() }
    func start(_ ready: @escaping @Sendable (UInt64) -> Void) throws(IrqFdError) { try inner.start(ready) }
    func watch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        watches.add(1, ordering: .relaxed)
        try inner.watch(handle, token: token)
    }
    func unwatch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        unwatches.add(1, ordering: .relaxed)
        try inner.unwatch(handle, token: token)
    }
    func stop() { inner.stop() }
    var calls: Int { watches.load(ordering: .relaxed) + unwatches.load(ordering: .relaxed) }
}

@Suite(needsKVM) struct RelayTests {
    @Test func unchangedSetMsiDoesNothingAndMaskUnmaskAreOneEpollCallEachWithNoInjection() throws {
        let guest = try CountingGuest(cpus: 1)
        let poller = try CountingPoller()
        let relay = try RelayIrqFd(
            injector: KVMSignalMsiInjector(vm: guest.vm.vm), poller: poller,
            makeEvent: { () throws(IrqFdError) -> any Event in try EventFD() })
        let route = try relay.newRoute()
        #expect(!route.isArmed && route.msi == nil, "a new route has no MSI and is unarmed")
        let msi = MsiMessage(destination: 0, vector: 0x61)
        try route.setMsi(msi)
        #expect(route.isArmed && poller.calls == 1)
        let before = guest.vm.vm.counters.snapshot
        for _ in 0..<100 { try route.setMsi(msi) }
        #expect(poller.calls == 1, "same message: no system call")
        try route.mask()
        try route.unmask()
        #expect(poller.unwatches.load(ordering: .relaxed) == 1 && poller.watches.load(ordering: .relaxed) == 2)
        #expect((guest.vm.vm.counters.snapshot - before).total == 0, "no KVM call without a signal")
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x61, count: 1))
        // The relay thread counts an injection after KVM_SIGNAL_MSI returns, so the
        // guest can take it first (the ThreadSanitizer pass in CI saw 0 here).
        #expect(eventually(.seconds(2)) { relay.statistics.injected == 1 }, "\(relay.statistics)")
    }

    @Test func signalsThatArriveTogetherCoalesceIntoOneInjection() throws {
        let guest = try CountingGuest(cpus: 1)
        let relay = try RelayIrqFd(vm: guest.vm.vm)
        let route = try relay.newRoute()
        try route.setMsi(MsiMessage(destination: 0, vector: 0x62))
        try route.mask()
        let event = try #require(route.event as? EventFD)
        event.add(5)  // five signals while masked: one pending interrupt
        try route.unmask()
        #expect(guest.waitFor(cpu: 0, vector: 0x62, count: 1))
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x62) == 1)
        #expect(relay.statistics.consumed == 1 && relay.statistics.injected == 1)
    }

    @Test func aRefusedInjectionPutsTheSignalBackAndDisarmsUntilTheNextUnmask() throws {
        let guest = try CountingGuest(cpus: 1)
        let relay = try RelayIrqFd(vm: guest.vm.vm)
        let route = try relay.newRoute()
        try route.setMsi(MsiMessage(destination: 0, vector: 0x63))
        guest.vm.vm.faults.failCall("KVM_SIGNAL_MSI", errno: .invalidArgument)
        route.event.signal()
        let disarmed = guest.vm.waitUntil(timeout: .seconds(10)) { !route.isArmed }
        #expect(disarmed)
        #expect(route.lastInjectionError == .call("KVM_SIGNAL_MSI", .invalidArgument))
        #expect(relay.statistics.failed == 1)
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x63) == 0)
        // The signal was not lost: it waits in the event, and re-arming delivers it.
        try route.mask()
        try route.unmask()
        #expect(guest.waitFor(cpu: 0, vector: 0x63, count: 1))
        #expect(route.lastInjectionError == nil)
    }

    @Test func aGoneVMIsPartitionGoneNotACrash() throws {
        let injector: KVMSignalMsiInjector
        do {
            let vm = try KVMSystem().createVM()
            injector = KVMSignalMsiInjector(vm: vm)
        }
        #expect(throws: IrqFdError.partitionGone) { try injector.inject(MsiMessage(destination: 0, vector: 0x40)) }
    }

    /// `droppingThePartitionStopsTheThreadAndLeavesNoDescriptorOpen` counts this process's descriptors and threads:
    /// it runs in a process of its own.
    static let droppingPartitionThreadsFilter =
        #"IrqFdRelayTests.RelayTests/droppingThePartitionStopsTheThreadAndLeavesNoDescriptorOpen"#
    @Test(notInOwnProcess) func droppingThePartitionStopsTheThreadAndLeavesNoDescriptorOpenInItsOwnProcess() throws {
        try runInOwnProcess(Self.droppingPartitionThreadsFilter)
    }

    @Test(inOwnProcess(Self.droppingPartitionThreadsFilter))
    func droppingThePartitionStopsTheThreadAndLeavesNoDescriptorOpen() throws {
        let guest = try CountingGuest(cpus: 1)
        let descriptors = openDescriptors()
        let threads = threadCount(named: EpollPoller.threadName)
        for cycle in 0..<200 {
            let relay = try RelayIrqFd(vm: guest.vm.vm)
            var routes = try (0..<4).map { _ in try relay.newRoute() }
            for (i, route) in routes.enumerated() {
                try route.setMsi(MsiMessage(destination: 0, vector: UInt8(0x70 + i)))
            }
            if cycle % 2 == 0 { try routes[1].mask() }
            routes[0].event.signal()
            routes[1].event.signal()  // latched if masked, and dropped with the route
            if cycle % 50 == 0 { #expect(guest.waitFor(cpu: 0, vector: 0x70, count: UInt32(cycle / 50 + 1))) }
            routes.removeAll()
        }
        #expect(threadCount(named: EpollPoller.threadName) == threads, "every relay thread was joined")
        let leaked = descriptorsLeaked(since: descriptors)
        #expect(leaked.isEmpty, "every epoll, wake and route descriptor was closed; open: \(leaked.sorted())")
    }

    /// `routesComeAndGoOnALivePartitionWithoutLeaking` counts this process's descriptors:
    /// it runs in a process of its own.
    static let routesComeAndGoFilter = #"IrqFdRelayTests.RelayTests/routesComeAndGoOnALivePartitionWithoutLeaking"#
    @Test(notInOwnProcess) func routesComeAndGoOnALivePartitionWithoutLeakingInItsOwnProcess() throws {
        try runInOwnProcess(Self.routesComeAndGoFilter)
    }

    @Test(inOwnProcess(Self.routesComeAndGoFilter)) func routesComeAndGoOnALivePartitionWithoutLeaking() throws {
        let guest = try CountingGuest(cpus: 1)
        let relay = try RelayIrqFd(vm: guest.vm.vm)
        let descriptors = openDescriptors()
        for i in 0..<5_000 {
            let route = try relay.newRoute()
            try route.setMsi(MsiMessage(destination: 0, vector: 0x80))
            if i % 3 == 0 { try route.mask() }
            if i % 5 == 0 { route.event.signal() }
        }
        // A route dropped while the relay thread handled it closes its event when the thread lets go.
        let leaked = descriptorsLeaked(since: descriptors)
        #expect(leaked.isEmpty, "descriptors left open: \(leaked.sorted())")
    }
}
#endif
