#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import IrqFdRouting
import KVM
import KVMFaultInjection
import SystemPackage
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// The two route operations that cannot report an error to anyone (drop) or
/// that fail outside the hypervisor (a new route's eventfd), attacked.
@Suite(needsKVM, .serialized, inOwnProcess(OwnProcess.lifecycleFaults)) struct LifecycleFaultTests {
    /// Dropping an armed route makes two calls (disarm, then the push that
    /// removes its entry); a release has no one to tell, so each failure must
    /// still free the GSI and close the event, and the next push must bring
    /// the kernel's table back in line.
    @Test(arguments: ["KVM_IRQFD", "KVM_SET_GSI_ROUTING"])
    func droppingAnArmedKVMRouteFailedAtEachCallFreesEverything(_ call: String) throws {
        let guest = try CountingGuest()
        let target = KVMTarget(guest)
        let freeBefore = guest.vm.irqfd.freeGsiCount
        let descriptorsBefore = settledDescriptorCount()
        var route: KVMIrqFdRoute? = try guest.vm.irqfd.newRoute()
        try route!.setMsi(MsiMessage(destination: 0, vector: 0x70))
        let gsi = route!.gsi
        guest.vm.vm.faults.failCall(call, errno: RouteFaultTests.injected)
        route = nil
        guest.vm.vm.faults.clear()
        #expect(guest.vm.irqfd.freeGsiCount == freeBefore, "the GSI was freed")
        #expect(openDescriptorCount() == descriptorsBefore, "the event was closed")
        // The GSI is handed out again; its first push replaces whatever the
        // failed release left in the kernel's table.
        let next = try guest.vm.irqfd.newRoute()
        #expect(next.gsi == gsi)
        try next.setMsi(MsiMessage(destination: 1, vector: 0x71))
        try verifyAgreement([next], target, guest, "\(call) failed in a drop")
        #expect(guest.count(cpu: 0, vector: 0x70) == 0, "the dropped route never delivered")
    }

    /// A batch of drops whose closing push fails: the batch reports the
    /// failed call, every GSI is free, and the next push cleans the table.
    @Test func droppingRoutesInABatchWhosePushFailsReportsItAndFreesEverything() throws {
        let guest = try CountingGuest()
        let target = KVMTarget(guest)
        let irqfd = guest.vm.irqfd
        let freeBefore = irqfd.freeGsiCount
        let descriptorsBefore = settledDescriptorCount()
        var routes = try (0..<8).map { _ in try irqfd.newRoute() }
        for (i, route) in routes.enumerated() { try route.setMsi(MsiMessage(destination: UInt32(i % 2), vector: 0x72)) }
        guest.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", errno: RouteFaultTests.injected)
        #expect(throws: IrqFdError.call("KVM_SET_GSI_ROUTING", RouteFaultTests.injected)) {
            try irqfd.withBatch { () throws(IrqFdError) in routes.removeAll() }
        }
        guest.vm.vm.faults.clear()
        #expect(routes.isEmpty && irqfd.freeGsiCount == freeBefore && openDescriptorCount() == descriptorsBefore)
        let next = try irqfd.newRoute()
        try next.setMsi(MsiMessage(destination: 0, vector: 0x73))
        try verifyAgreement([next], target, guest, "a batch of drops whose push failed")
    }

    /// Dropping an armed relay route whose epoll_ctl(DEL) fails: the route
    /// is forgotten and its event closed all the same (closing a descriptor
    /// removes it from every epoll set), and the relay keeps serving others.
    @Test func droppingAnArmedRelayRouteWhoseUnwatchFailsForgetsItAllTheSame() throws {
        let guest = try CountingGuest()
        let target = try RelayTarget(guest)
        let descriptorsBefore = settledDescriptorCount()
        var route: RelayIrqFdRoute? = try target.relay.newRoute()
        try route!.setMsi(MsiMessage(destination: 0, vector: 0x74))
        target.poller.fail(FaultyPoller.delete, after: 0, errno: RouteFaultTests.injected)
        route = nil
        target.poller.clear()
        #expect(openDescriptorCount() == descriptorsBefore, "the event was closed")
        let next = try target.relay.newRoute()
        try next.setMsi(MsiMessage(destination: 1, vector: 0x75))
        try verifyAgreement([next], target, guest, "epoll_ctl(DEL) failed in a drop")
        #expect(guest.count(cpu: 0, vector: 0x74) == 0)
    }

    /// A relay injection refused by KVM_SIGNAL_MSI: the signal is put back
    /// (never lost), the route disarmed and the error kept; mask + unmask
    /// re-arms it and the latched signal is delivered then.
    @Test func aRelayInjectionRefusedByKVMKeepsTheSignalAndRecovers() throws {
        let guest = try CountingGuest()
        let target = try RelayTarget(guest)
        let route = try target.relay.newRoute()
        try route.setMsi(MsiMessage(destination: 1, vector: 0x76))
        guest.vm.vm.faults.failCall("KVM_SIGNAL_MSI", errno: RouteFaultTests.injected)
        route.event.signal()
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { !route.isArmed })
        guest.vm.vm.faults.clear()
        #expect(route.lastInjectionError == .call("KVM_SIGNAL_MSI", RouteFaultTests.injected))
        #expect(guest.count(cpu: 1, vector: 0x76) == 0)
        try route.mask()
        try route.unmask()
        #expect(guest.waitFor(cpu: 1, vector: 0x76, count: 1), "the kept signal is delivered once re-armed")
        try verifyAgreement([route], target, guest, "after a refused injection")
    }

    /// With every descriptor number taken (RLIMIT_NOFILE), a new route's
    /// eventfd fails: a typed error naming eventfd and EMFILE, the GSI is
    /// not kept, and routes work again once descriptors are free.
    @Test func aNewRouteWithNoDescriptorLeftIsATypedErrorThatKeepsNothing() throws {
        let guest = try CountingGuest()
        let kvm = KVMTarget(guest)
        let relay = try RelayTarget(guest)
        let freeBefore = guest.vm.irqfd.freeGsiCount
        let descriptorsBefore = settledDescriptorCount()
        try withEveryDescriptorTaken {
            #expect(throws: IrqFdError.call("eventfd", .tooManyOpenFiles)) { try guest.vm.irqfd.newRoute() }
            #expect(throws: IrqFdError.call("eventfd", .tooManyOpenFiles)) { try relay.relay.newRoute() }
        }
        #expect(guest.vm.irqfd.freeGsiCount == freeBefore, "the GSI taken for the failed route was returned")
        #expect(openDescriptorCount() == descriptorsBefore)
        for target in [kvm, relay] as [any FaultTarget] {
            let route = try target.newRoute()
            try route.setMsi(MsiMessage(destination: 0, vector: 0x77))
            try verifyAgreement([route], target, guest, "\(target.name): after EMFILE")
        }
    }
}

/// Runs `body` with RLIMIT_NOFILE lowered to just above the highest open
/// descriptor and every number below it taken, so the next descriptor any
/// call makes fails with EMFILE. Restores both afterwards.
func withEveryDescriptorTaken(_ body: () throws -> Void) throws {
    var saved = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved) == 0 else { throw Errno(rawValue: errno) }
    let highest =
        (try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")).compactMap { Int32($0) }.max() ?? 2
    var lowered = saved
    lowered.rlim_cur = rlim_t(highest + 1)
    guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered) == 0 else { throw Errno(rawValue: errno) }
    var taken: [Int32] = []
    while true {
        let fd = dup(0)
        if fd < 0 { break }
        taken.append(fd)
    }
    defer {
        for fd in taken { close(fd) }
        var restore = saved
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &restore)
    }
    try body()
}
#endif
