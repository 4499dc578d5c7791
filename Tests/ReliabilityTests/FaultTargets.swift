#if os(Linux)
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import IrqFdRelay
import IrqFdRouting
import KVM
import KVMFaultInjection
import Synchronization
import SystemPackage
import KVMTestSupport
import TestSupport
import TinyVM

/// What every attacked route shows from outside: the state a failed call
/// must leave as it was, and that the kernel must agree with.
protocol InspectableRoute: IrqFdRoute {
    var msi: MsiMessage? { get }
    var isArmed: Bool { get }
    var isMasked: Bool { get }
    /// Whether an interim relay delivers the route's signals (a coalescing partition).
    var isServed: Bool { get }
}

extension RoutedIrqFdRoute: InspectableRoute {}
extension RelayIrqFdRoute: InspectableRoute {
    /// A relay route is the relay: it is armed, never served by another.
    var isServed: Bool { false }
}

/// A route's observable state.
struct RouteSnapshot: Equatable, CustomStringConvertible {
    var msi: MsiMessage?
    var armed: Bool
    var masked: Bool

    init(_ route: any InspectableRoute) {
        msi = route.msi
        armed = route.isArmed
        masked = route.isMasked
    }

    var description: String {
        "msi \(msi.map { "\($0)" } ?? "none"), \(armed ? "armed" : "unarmed"), \(masked ? "masked" : "unmasked")"
    }
}

/// "KVM_IRQFD x2, KVM_SET_GSI_ROUTING x1", or "none".
func describe(_ calls: [String: Int]) -> String {
    calls.isEmpty ? "none" : calls.sorted { $0.key < $1.key }.map { "\($0.key) x\($0.value)" }.joined(separator: ", ")
}

/// A backend whose system calls the attacks can fail one at a time.
protocol FaultTarget: AnyObject {
    var name: String { get }
    /// The partition, for consumers such as the MSI-X emulator.
    var partition: any IrqFd { get }
    /// A fresh route (no MSI, unarmed).
    func newRoute() throws(IrqFdError) -> any InspectableRoute
    /// The backend's batch (a plain call where there is no table).
    func batch(_ body: () throws(IrqFdError) -> Void) throws(IrqFdError)
    /// Makes the `skip + 1`-th next call named `call` fail with `errno`.
    func fail(_ call: String, after skip: Int, errno: Errno)
    /// Stops failing calls.
    func clearFaults()
    /// Calls made so far, by name.
    var callCounts: [String: Int] { get }
    /// Table entries the kernel holds (nil: the backend has no table).
    var pushedTable: [RoutingEntry]? { get }
    /// The table `routes` want, in the backend's GSI order (nil: no table).
    func wantedTable(_ routes: [any InspectableRoute]) -> [RoutingEntry]?
    /// GSIs still free (nil: the backend has none).
    var freeGsis: Int? { get }
    /// The routes of the partition that break the invariant every route
    /// operation keeps (live for its owner: armed or served, never both;
    /// otherwise neither), described; empty when all hold.
    func invariantViolations(_ routes: [any InspectableRoute]) -> [String]
}

/// The KVM backend, failed through `VirtualMachine.faults` (by ioctl name).
final class KVMTarget: FaultTarget {
    let irqfd: KVMIrqFd
    let vm: VirtualMachine
    init(_ guest: CountingGuest) {
        irqfd = guest.vm.irqfd
        vm = guest.vm.vm
    }
    var name: String { irqfd.coalescesDeferredChanges ? "KVM irqfd, coalescing" : "KVM irqfd" }
    func invariantViolations(_ routes: [any InspectableRoute]) -> [String] { irqfd.invariantViolations() }
    var partition: any IrqFd { irqfd }
    func newRoute() throws(IrqFdError) -> any InspectableRoute { try irqfd.newRoute() }
    func batch(_ body: () throws(IrqFdError) -> Void) throws(IrqFdError) { try irqfd.withBatch(body) }
    func fail(_ call: String, after skip: Int, errno: Errno) { vm.faults.failCall(call, after: skip, errno: errno) }
    func clearFaults() { vm.faults.clear() }
    var callCounts: [String: Int] {
        let c = vm.counters.snapshot
        return ["KVM_SET_GSI_ROUTING": c.routingPushes, "KVM_IRQFD": c.irqfdAssigns + c.irqfdDeassigns]
    }
    /// On a coalescing partition, once the drops still waiting (a dropped route's removal joins the next
    /// coalesced commit) are committed.
    var pushedTable: [RoutingEntry]? {
        if irqfd.coalescesDeferredChanges { irqfd.commitNow() }
        return irqfd.pushedEntries
    }
    func wantedTable(_ routes: [any InspectableRoute]) -> [RoutingEntry]? {
        routes.compactMap { route -> RoutingEntry? in
            guard let kvm = route as? KVMIrqFdRoute, let msi = kvm.msi else { return nil }
            return RoutingEntry(gsi: kvm.gsi, msi: msi)
        }.sorted { $0.gsi < $1.gsi }
    }
    var freeGsis: Int? { irqfd.freeGsiCount }
}

/// The real epoll poller with a fault seam in front of it: a planned call
/// fails exactly as a failed epoll_ctl(2) would (nothing changes, the error
/// names the call) instead of reaching the kernel.
final class FaultyPoller: RelayPoller {
    let inner: EpollPoller
    private let plan = Mutex<(call: String, skip: Int, errno: Errno)?>(nil)
    private let counts = Mutex<[String: Int]>([:])
    static let add = "epoll_ctl(EPOLL_CTL_ADD)"
    static let delete = "epoll_ctl(EPOLL_CTL_DEL)"

    init() throws(IrqFdError) { inner = try EpollPoller() }

    func fail(_ call: String, after skip: Int, errno: Errno) { plan.withLock { $0 = (call, skip, errno) } }
    func clear() { plan.withLock { $0 = nil } }
    var callCounts: [String: Int] { counts.withLock { $0 } }

    private func check(_ call: String) throws(IrqFdError) {
        counts.withLock { $0[call, default: 0] += 1 }
        let fault = plan.withLock { plan -> Errno? in
            guard let p = plan, p.call == call else { return nil }
            if p.skip > 0 {
                plan = (p.call, p.skip - 1, p.errno)
                return nil
            }
            plan = nil
            return p.errno
        }
        if let fault { throw .call(call, fault) }
    }

    func start(_ ready: @escaping @Sendable (UInt64) -> Void) throws(IrqFdError) { try inner.start(ready) }
    func watch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        try check(Self.add)
        try inner.watch(handle, token: token)
    }
    func unwatch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        try check(Self.delete)
        try inner.unwatch(handle, token: token)
    }
    func stop() { inner.stop() }
}

/// The relay backend over KVM_SIGNAL_MSI, failed through its poller (epoll_ctl)
/// and, for injections, through `VirtualMachine.faults`.
final class RelayTarget: FaultTarget {
    let relay: RelayIrqFd
    let poller: FaultyPoller
    init(_ guest: CountingGuest) throws(IrqFdError) {
        poller = try FaultyPoller()
        relay = try RelayIrqFd(
            injector: KVMSignalMsiInjector(vm: guest.vm.vm), poller: poller,
            makeEvent: { () throws(IrqFdError) -> any Event in try EventFD() })
    }
    var name: String { "relay" }
    /// A relay route has no table to wait for: it must be armed (watched) only when unmasked with an MSI.
    func invariantViolations(_ routes: [any InspectableRoute]) -> [String] {
        routes.filter { $0.isArmed && ($0.msi == nil || $0.isMasked) }.map { "\(RouteSnapshot($0)) is armed" }
    }
    var partition: any IrqFd { relay }
    func newRoute() throws(IrqFdError) -> any InspectableRoute { try relay.newRoute() }
    func batch(_ body: () throws(IrqFdError) -> Void) throws(IrqFdError) { try relay.withBatch(body) }
    func fail(_ call: String, after skip: Int, errno: Errno) { poller.fail(call, after: skip, errno: errno) }
    func clearFaults() { poller.clear() }
    var callCounts: [String: Int] { poller.callCounts }
    var pushedTable: [RoutingEntry]? { nil }
    func wantedTable(_ routes: [any InspectableRoute]) -> [RoutingEntry]? { nil }
    var freeGsis: Int? { nil }
}
#endif
