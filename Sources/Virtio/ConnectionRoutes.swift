#if os(Linux)
import IrqFdCore
import Synchronization

/// The device's MSI-X partition: the VM's (or the relay's) partition, with
/// routes whose event can be replaced, so that only the current backend
/// connection can raise a queue's interrupt.
///
/// A backend keeps every call fd it was ever sent (SCM_RIGHTS gives it its
/// own reference), and the kernel's irqfd delivers whatever signals the
/// event it is bound to. The only way to take an event back is to stop
/// binding it: ``retireEvents()`` gives every route a fresh event (a new
/// route of the underlying partition with the same message and mask state,
/// KVM_IRQFD bound to the new event) and releases the old route, whose event
/// then reaches nobody. The device does that when a connection stops
/// serving the queues (a reset, a dropped connection); the next DRIVER_OK
/// sends the new events. A signal latched in a retired event while its
/// vector was masked is a pending interrupt and moves to the new event (one
/// pending bit, one interrupt on unmask); every later signal of the old
/// event is lost.
///
/// The emulator sees one route per vector for its whole life (its
/// ``ConnectionScopedRoute/event`` forwards to the current one), as
/// `MsixEmulator.event(for:)` promises.
final class ConnectionScopedPartition: IrqFd {
    let base: any IrqFd
    private let routes = Mutex<[WeakRoute]>([])

    private struct WeakRoute: @unchecked Sendable {
        // @unchecked: a weak reference to a Sendable class, read and written under `routes`' lock only.
        weak var route: ConnectionScopedRoute?
    }

    init(_ base: any IrqFd) { self.base = base }

    func newIrqFdRoute() throws(IrqFdError) -> any IrqFdRoute {
        let route = ConnectionScopedRoute(try base.newIrqFdRoute(), base: base)
        routes.withLock { r in
            r.removeAll { $0.route == nil }
            r.append(WeakRoute(route: route))
        }
        return route
    }

    /// A route over `event`, made elsewhere (a predecessor VMM's route event,
    /// which the backend holds as a call fd): adopted by the underlying
    /// partition, and retired like any other.
    func newIrqFdRoute(adopting event: any Event) throws(IrqFdError) -> any IrqFdRoute {
        let route = ConnectionScopedRoute(try base.newIrqFdRoute(adopting: event), base: base)
        routes.withLock { r in
            r.removeAll { $0.route == nil }
            r.append(WeakRoute(route: route))
        }
        return route
    }

    func withBatch<Result>(_ body: () throws(IrqFdError) -> Result) throws(IrqFdError) -> Result {
        try base.withBatch(body)
    }

    var coalescesDeferredChanges: Bool { base.coalescesDeferredChanges }

    /// Gives every route a fresh event (see the type's comment). Returns the
    /// first failure; a route that failed keeps its event.
    @discardableResult
    func retireEvents() -> IrqFdError? {
        let live = routes.withLock { r in r.compactMap(\.route) }
        var first: IrqFdError?
        for route in live {
            do throws(IrqFdError) { try route.replaceEvent() } catch { first = first ?? error }
        }
        return first
    }

    /// Events retired so far (one per route per retirement).
    var retired: Int { routes.withLock { r in r.compactMap(\.route).reduce(0) { $0 + $1.replacements } } }
}

/// One vector's route over a replaceable route of the underlying partition.
final class ConnectionScopedRoute: IrqFdRoute {
    struct State {
        var route: any IrqFdRoute
        /// What the emulator last asked for, replayed on a replacement.
        var message: MsiMessage?
        var unmasked = false
        var replacements = 0
    }
    /// The state, shared with the route's ``ForwardingEvent``.
    private let shared: ForwardingEvent.Shared
    private let base: any IrqFd
    /// The current underlying route's event, whichever it is when used.
    let event: any Event

    init(_ route: any IrqFdRoute, base: any IrqFd) {
        shared = ForwardingEvent.Shared(State(route: route))
        self.base = base
        event = ForwardingEvent(shared)
    }

    var replacements: Int { shared.state.withLock { $0.replacements } }

    func setMsi(address: UInt64, data: UInt32) throws(IrqFdError) {
        try shared.state.withLock { (s: inout State) throws(IrqFdError) in
            defer { s.message = MsiMessage(address: address, data: data) }
            try s.route.setMsi(address: address, data: data)
        }
    }

    func setMsiDeferred(address: UInt64, data: UInt32) throws(IrqFdError) {
        try shared.state.withLock { (s: inout State) throws(IrqFdError) in
            defer { s.message = MsiMessage(address: address, data: data) }
            try s.route.setMsiDeferred(address: address, data: data)
        }
    }

    func clearMsi() throws(IrqFdError) {
        try shared.state.withLock { (s: inout State) throws(IrqFdError) in
            try s.route.clearMsi()
            s.message = nil
        }
    }

    func mask() throws(IrqFdError) {
        try shared.state.withLock { (s: inout State) throws(IrqFdError) in
            try s.route.mask()
            s.unmasked = false
        }
    }

    func unmask() throws(IrqFdError) {
        try shared.state.withLock { (s: inout State) throws(IrqFdError) in
            try s.route.unmask()
            s.unmasked = true
        }
    }

    func consumePending() -> Bool { shared.state.withLock { $0.route.consumePending() } }

    /// A new underlying route (a new event) with this one's message and mask
    /// state; the old one is disarmed and released, outside the lock (its
    /// release pushes the routing table).
    func replaceEvent() throws(IrqFdError) {
        let fresh = try base.newIrqFdRoute()
        let old = try shared.state.withLock { (s: inout State) throws(IrqFdError) -> any IrqFdRoute in
            if let message = s.message {
                do throws(IrqFdError) { try fresh.setMsi(message) } catch {
                    // Refused as before: the emulator counts its signals as undeliverable.
                    guard case .undeliverableAddress = error else { throw error }
                }
            }
            if s.unmasked { try fresh.unmask() } else { try fresh.mask() }
            // From here on the old event reaches nobody. What latched in it while
            // the vector was masked is a pending interrupt (the PBA shows it, unmask
            // delivers it once): it moves to the new event, as one signal.
            try? s.route.mask()
            if s.route.consumePending() { fresh.event.signal() }
            let old = s.route
            s.route = fresh
            s.replacements += 1
            return old
        }
        _ = old
    }
}

/// The event a ``ConnectionScopedRoute`` shows: each call goes to the
/// route's current event (the emulator signals it to deliver a pending
/// interrupt, the device hands its descriptor to the backend).
final class ForwardingEvent: Event {
    /// The route's state, shared by the route and its event (no reference cycle).
    final class Shared: Sendable {
        let state: Mutex<ConnectionScopedRoute.State>
        init(_ state: ConnectionScopedRoute.State) { self.state = Mutex(state) }
    }
    private let shared: Shared

    init(_ shared: Shared) { self.shared = shared }

    private var current: any Event { shared.state.withLock { $0.route.event } }

    func signal() { current.signal() }
    func tryWait() -> Bool { current.tryWait() }
    func wait(timeout: Duration) -> Bool { current.wait(timeout: timeout) }
    var nativeHandle: NativeEventHandle { current.nativeHandle }
}
#endif
