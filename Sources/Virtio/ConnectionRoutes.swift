#if os(Linux)
import IrqFdCore
import IrqFdLinux
import Synchronization
import SystemPackage

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

/// The call eventfds the device owns, scoped to one backend connection as
/// ``ConnectionScopedPartition``'s route events are: with `.userspace`
/// delivery the device's watcher waits on them and injects each completion
/// itself; in every mode a queue with no vector gets one (nobody waits on
/// it: NO_VECTOR means no interrupt).
///
/// A backend keeps every call fd it was sent, so, as with the route events,
/// the only way to take one back is to stop waiting on it: ``retire()``
/// gives every queue a fresh eventfd, registered with the watcher's epoll
/// under a token of the new generation, and removes the old ones from it
/// (EPOLL_CTL_DEL: the kernel keeps a registration as long as any process
/// holds the file, so closing our descriptor would not end it). A report
/// of the old generation already taken from epoll is dropped by
/// ``consume(token:)``; both run under one lock, so after ``retire()``
/// returns no signal of an old eventfd is consumed any more.
final class ConnectionScopedCalls: Sendable {
    private struct State {
        var events: [EventFD]
        /// The previous generation, kept open until the next retirement: a
        /// start under way on the worker may still be sending one of them
        /// (SCM_RIGHTS borrows the descriptor until sendmsg(2) returns).
        var previous: [EventFD] = []
        var generation: UInt64 = 0
        /// The epoll instance waiting on `events`, and the token of queue 0.
        var waiter: (epoll: Epoll, firstToken: UInt64)?
    }
    private let state: Mutex<State>

    /// The generation's place in a token: queue q of generation g is `firstToken + g << 16 + q`.
    private static var generationShift: UInt64 { 16 }

    /// One eventfd per queue.
    init(queues: Int) throws(IrqFdError) {
        state = Mutex(State(events: try (0..<queues).map { _ throws(IrqFdError) in try EventFD() }))
    }

    /// Over `events`, one per queue: a predecessor VMM's, which the backend holds as call fds.
    init(adopting events: [EventFD]) { state = Mutex(State(events: events)) }

    /// Queue `q`'s current eventfd.
    func event(queue q: Int) -> EventFD { state.withLock { $0.events[q] } }

    /// The current eventfds, one per queue. (The previous generation's are
    /// closed at the next retirement, or when this object goes.)
    var descriptors: [FileDescriptor] { state.withLock { $0.events.map(\.fileDescriptor) } }

    /// Registers the current eventfds with `epoll` (and every later generation, as it is made).
    func watch(in epoll: Epoll, firstToken: UInt64) throws(SystemCallError) {
        try state.withLock { (s: inout State) throws(SystemCallError) in
            for (q, event) in s.events.enumerated() {
                try epoll.add(event.fileDescriptor, token: Self.token(firstToken, s.generation, q))
            }
            s.waiter = (epoll, firstToken)
        }
    }

    private static func token(_ first: UInt64, _ generation: UInt64, _ q: Int) -> UInt64 {
        first + (generation << generationShift) + UInt64(q)
    }

    /// The epoll report `token`: the queue and the count its eventfd held
    /// (consumed), or nil when the token is not one of the current generation's.
    func consume(token: UInt64) -> (queue: Int, count: UInt64)? {
        state.withLock { s in
            guard let waiter = s.waiter, token >= waiter.firstToken else { return nil }
            let relative = token - waiter.firstToken
            let q = Int(relative & ((1 << Self.generationShift) - 1))
            guard relative >> Self.generationShift == s.generation, s.events.indices.contains(q) else { return nil }
            return (q, s.events[q].consume())
        }
    }

    /// Gives every queue a fresh eventfd and stops waiting on the old ones
    /// (see the type's comment). Returns, by queue, the count each old one
    /// still held: signals from while its connection served the queue, which
    /// the caller delivers as the kernel's irqfd would have at once. On a
    /// failure (no descriptor left) the old ones stay.
    func retire() throws(IrqFdError) -> [UInt64] {
        try state.withLock { (s: inout State) throws(IrqFdError) -> [UInt64] in
            let fresh = try s.events.indices.map { _ throws(IrqFdError) in try EventFD() }
            // A generation has the 48 bits of a token above the queue's 16.
            let generation = (s.generation &+ 1) & ((1 << (64 - Self.generationShift)) - 1)
            if let waiter = s.waiter {
                do throws(SystemCallError) {
                    for (q, event) in fresh.enumerated() {
                        try waiter.epoll.add(
                            event.fileDescriptor, token: Self.token(waiter.firstToken, generation, q))
                    }
                } catch {
                    for event in fresh { try? waiter.epoll.remove(event.fileDescriptor) }
                    throw .systemCall(error)
                }
                for event in s.events { try? waiter.epoll.remove(event.fileDescriptor) }
            }
            let held = s.events.map { $0.consume() }
            s.previous = s.events
            s.events = fresh
            s.generation = generation
            return held
        }
    }
}
#endif
