public import IrqFdCore
import Synchronization

/// The relay backend: a userspace `IrqFd` for any hypervisor that can inject
/// an MSI on request (`MsiInjector`).
///
/// One relay thread per partition (`RelayPoller`: epoll on Linux) sleeps on
/// the events of every armed route; when one is signalled it consumes the
/// event's counter and injects the route's MSI once (signals that arrived
/// together coalesce into one interrupt, as with KVM's irqfd). There is no
/// GSI and no routing table: a route's MSI lives in the route.
///
/// The twelve rules, where they apply:
/// - new route: a fresh event, no MSI, unarmed (not watched);
/// - `setMsi` validates, stores, then arms; the same message again does nothing;
/// - `mask`/`clearMsi` stop watching the event (one `epoll_ctl`); signals latch in
///   the event's counter, never lost; `unmask` watches it again and, because
///   the poller is level-triggered, anything latched is injected at once;
/// - an undeliverable address is a typed error and leaves the route disarmed;
/// - releasing a route stops watching its event and closes it; releasing the
///   partition (and every route) stops and joins the thread and closes its
///   descriptors.
///
/// A signal racing `mask()` is either injected before `mask()` returns or
/// latched for `consumePending`/`unmask`: the relay consumes the counter and
/// injects while holding the route's lock, and `mask` takes that lock, so no
/// injection can start after `mask` returned.
///
/// The same relay serves WHP (`WHvRequestInterrupt` as the injector, waits on
/// the trigger events) and macOS Hypervisor.framework (`hv_gic_send_msi`);
/// only the `RelayPoller` differs.
public final class RelayIrqFd: IrqFd {
    /// How every route injects.
    public let injector: any MsiInjector
    let poller: any RelayPoller
    let registry: Registry
    private let makeEvent: @Sendable () throws(IrqFdError) -> any Event

    /// A partition whose routes inject through `injector`, with events made by
    /// `makeEvent`, relayed by `poller` (which this partition starts and owns).
    public init(
        injector: any MsiInjector, poller: any RelayPoller,
        makeEvent: @escaping @Sendable () throws(IrqFdError) -> any Event
    ) throws(IrqFdError) {
        self.injector = injector
        self.poller = poller
        self.makeEvent = makeEvent
        let registry = Registry()
        self.registry = registry
        try poller.start { token in registry.relay(token) }
    }

    deinit { poller.stop() }

    /// A route with a fresh event: no MSI, unarmed.
    public func newRoute() throws(IrqFdError) -> RelayIrqFdRoute {
        RelayIrqFdRoute(event: try makeEvent(), partition: self)
    }

    /// A route relaying an event made elsewhere (the WHP backend hands over a
    /// trigger's event this way): no MSI, unarmed. The route keeps `event`
    /// alive but does not otherwise own it.
    public func newRoute(adopting event: any Event) -> RelayIrqFdRoute {
        RelayIrqFdRoute(event: event, partition: self)
    }

    /// See `IrqFd.newIrqFdRoute()`.
    public func newIrqFdRoute() throws(IrqFdError) -> any IrqFdRoute { try newRoute() }

    /// See `IrqFd.newIrqFdRoute(adopting:)`.
    public func newIrqFdRoute(adopting event: any Event) throws(IrqFdError) -> any IrqFdRoute {
        newRoute(adopting: event)
    }

    /// What the relay thread has done so far.
    public var statistics: Statistics { registry.statistics }

    /// Counts kept by the relay thread.
    public struct Statistics: Equatable, Sendable, CustomStringConvertible {
        /// Times the thread found a route's event signalled and consumed it.
        public var consumed: Int
        /// MSIs injected (one per consumption that succeeded).
        public var injected: Int
        /// Injections the hypervisor refused; the signal was put back in the event
        /// and the route disarmed (see `RelayIrqFdRoute.lastInjectionError`).
        public var failed: Int
        /// Reports for routes that were no longer armed (masked or dropped meanwhile).
        public var stale: Int

        public var description: String {
            "consumed \(consumed), injected \(injected), failed \(failed), stale \(stale)"
        }
    }

    /// The routes the relay thread can reach, by token. Kept apart from the
    /// partition so the thread never holds the partition (or a route) alive.
    final class Registry: Sendable {
        private let slots = Mutex<[UInt64: Slot]>([:])
        private let nextToken = Atomic<UInt64>(1)
        let consumed = Atomic<Int>(0)
        let injected = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
        let stale = Atomic<Int>(0)

        func add(_ slot: Slot) { slots.withLock { $0[slot.token] = slot } }
        func remove(_ token: UInt64) { slots.withLock { $0[token] = nil } }
        func makeToken() -> UInt64 { nextToken.add(1, ordering: .relaxed).oldValue }

        /// On the relay thread: the event registered under `token` is signalled.
        func relay(_ token: UInt64) {
            // The map lock is released before the slot's lock is taken (rule 11 order:
            // route lock, then partition lock, never the reverse).
            guard let slot = slots.withLock({ $0[token] }) else {
                stale.add(1, ordering: .relaxed)
                return
            }
            slot.relay(self)
        }

        var statistics: Statistics {
            Statistics(
                consumed: consumed.load(ordering: .relaxed), injected: injected.load(ordering: .relaxed),
                failed: failed.load(ordering: .relaxed), stale: stale.load(ordering: .relaxed))
        }
    }

    /// A route's state as the relay thread sees it. The route owns it; the
    /// registry refers to it while the route lives; the relay thread holds it
    /// only while handling one report, so its event cannot close under it.
    final class Slot: Sendable {
        let token: UInt64
        let event: any Event
        let injector: any MsiInjector
        let poller: any RelayPoller
        let state = Mutex(State())

        struct State {
            var msi: MsiMessage?
            var masked = false
            /// Watched by the poller: has an MSI, not masked, not dropped.
            var armed = false
            var dropped = false
            var lastError: IrqFdError?
        }

        init(token: UInt64, event: any Event, injector: any MsiInjector, poller: any RelayPoller) {
            self.token = token
            self.event = event
            self.injector = injector
            self.poller = poller
        }

        func arm(_ s: inout State) throws(IrqFdError) {
            guard !s.armed else { return }
            try poller.watch(event.nativeHandle, token: token)
            s.armed = true
        }

        func disarm(_ s: inout State) throws(IrqFdError) {
            guard s.armed else { return }
            try poller.unwatch(event.nativeHandle, token: token)
            s.armed = false
        }

        /// Consume and inject, all under the route's lock: that is what orders
        /// every injection before a concurrent `mask()` returns or not at all.
        func relay(_ registry: Registry) {
            state.withLock { s in
                guard s.armed, !s.masked, let msi = s.msi else {
                    registry.stale.add(1, ordering: .relaxed)
                    return
                }
                guard event.tryWait() else { return }
                registry.consumed.add(1, ordering: .relaxed)
                do throws(IrqFdError) {
                    try injector.inject(msi)
                    registry.injected.add(1, ordering: .relaxed)
                } catch {
                    // Never lost: the signal goes back into the event, and the route
                    // stops being watched (level-triggered, it would spin otherwise).
                    registry.failed.add(1, ordering: .relaxed)
                    event.signal()
                    s.lastError = error
                    try? disarm(&s)
                }
            }
        }
    }
}

/// A route of the relay backend: an event, and the MSI the relay thread
/// injects when the event is signalled.
public final class RelayIrqFdRoute: IrqFdRoute {
    /// The route's event; the same object for its whole life.
    public let event: any Event
    /// The partition; kept alive by its routes, as in the KVM backend.
    public let partition: RelayIrqFd
    let slot: RelayIrqFd.Slot

    init(event: any Event, partition: RelayIrqFd) {
        self.event = event
        self.partition = partition
        slot = RelayIrqFd.Slot(
            token: partition.registry.makeToken(), event: event, injector: partition.injector, poller: partition.poller)
        partition.registry.add(slot)
    }

    deinit {
        // Rule 12: stop watching, forget the route; the event closes with its last owner.
        slot.state.withLock { s in
            try? slot.disarm(&s)
            s.dropped = true
        }
        partition.registry.remove(slot.token)
    }

    /// The MSI this route injects, if one is set.
    public var msi: MsiMessage? { slot.state.withLock { $0.msi } }
    /// Whether the route is masked.
    public var isMasked: Bool { slot.state.withLock { $0.masked } }
    /// Whether the relay thread is watching the event.
    public var isArmed: Bool { slot.state.withLock { $0.armed } }
    /// Why the last injection failed, if one did (the route was disarmed then;
    /// the next `setMsi` with a new message or `unmask` after a `mask` re-arms it).
    public var lastInjectionError: IrqFdError? { slot.state.withLock { $0.lastError } }

    /// Stores the MSI, then arms unless masked. Unchanged: no work at all.
    /// Undeliverable: the route is disarmed, its MSI cleared, and the error thrown.
    public func setMsi(address: UInt64, data: UInt32) throws(IrqFdError) {
        let message = MsiMessage(address: address, data: data)
        try slot.state.withLock { (s: inout RelayIrqFd.Slot.State) throws(IrqFdError) in
            guard message.isDeliverable else {
                try slot.disarm(&s)
                s.msi = nil
                throw .undeliverableAddress(address)
            }
            if s.msi == message && (s.armed || s.masked) { return }
            let previous = s.msi
            s.msi = message
            guard !s.masked else { return }
            do throws(IrqFdError) {
                try slot.arm(&s)
                s.lastError = nil
            } catch {
                s.msi = previous
                throw error
            }
        }
    }

    /// Disarms, then forgets the MSI; signals latch in the event.
    public func clearMsi() throws(IrqFdError) {
        try slot.state.withLock { (s: inout RelayIrqFd.Slot.State) throws(IrqFdError) in
            try slot.disarm(&s)
            s.msi = nil
        }
    }

    /// Stops watching the event; signals latch in it. Once this returns, no
    /// injection for this route starts until `unmask`.
    public func mask() throws(IrqFdError) {
        try slot.state.withLock { (s: inout RelayIrqFd.Slot.State) throws(IrqFdError) in
            guard !s.masked else { return }
            try slot.disarm(&s)
            s.masked = true
        }
    }

    /// Watches the event again (if the route has an MSI); a latched signal is
    /// injected by the relay thread right away.
    public func unmask() throws(IrqFdError) {
        try slot.state.withLock { (s: inout RelayIrqFd.Slot.State) throws(IrqFdError) in
            guard s.masked else { return }
            if s.msi != nil { try slot.arm(&s) }
            s.masked = false
            s.lastError = nil
        }
    }
}
