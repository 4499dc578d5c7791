/// A partition (VM) that can make irqfd routes: events that, when signalled,
/// make the hypervisor inject a configured MSI with no VMM code on the path.
public protocol IrqFd: Sendable {
    /// Makes a route: the lowest free GSI and a fresh event. The route starts
    /// with no MSI and unarmed. Releasing the last reference unregisters it and
    /// frees its GSI.
    func newIrqFdRoute() throws(IrqFdError) -> any IrqFdRoute

    /// Makes a route over `event`, an event made elsewhere (by another
    /// process, or by the VMM this one took a guest over from), instead of a
    /// fresh one: no MSI, unarmed. Signals latched in `event` stay there and
    /// are injected once the route is armed. A backend that cannot adopt
    /// throws `unsupported`.
    func newIrqFdRoute(adopting event: any Event) throws(IrqFdError) -> any IrqFdRoute

    /// Runs `body` with routing-table pushes deferred: every change made inside
    /// is pushed to the hypervisor once, when the outermost batch ends, and
    /// routes are armed after that push. Batches nest.
    func withBatch<Result>(_ body: () throws(IrqFdError) -> Result) throws(IrqFdError) -> Result

    /// Whether `IrqFdRoute.setMsiDeferred` joins a coalesced commit here
    /// (no table push per call). An MSI-X emulator then routes a vector as
    /// soon as its entry is programmed, while it is still masked, so that the
    /// guest's unmask only arms it; without coalescing that would cost a
    /// push per table write, so it waits for the unmask instead.
    var coalescesDeferredChanges: Bool { get }
}

extension IrqFd {
    /// Backends without coalesced commits push (or need nothing) per change.
    public var coalescesDeferredChanges: Bool { false }

    /// Backends whose events are not file descriptors another process can
    /// pass cannot adopt one.
    public func newIrqFdRoute(adopting event: any Event) throws(IrqFdError) -> any IrqFdRoute {
        throw .unsupported("this backend cannot adopt an event made elsewhere")
    }

    /// Backends without a routing table to push have nothing to defer.
    public func withBatch<Result>(_ body: () throws(IrqFdError) -> Result) throws(IrqFdError) -> Result {
        try body()
    }
}

/// One route: one GSI and one event, with the MSI it injects.
///
/// Routes may be used from any thread. Every operation is idempotent: repeating
/// it makes no system call.
public protocol IrqFdRoute: AnyObject, Sendable {
    /// The event that triggers injection; the same object for the route's whole life.
    var event: any Event { get }

    /// Sets the MSI this route injects and arms it unless masked. The routing
    /// entry is written before the event is armed; an unchanged message makes
    /// no system call. An undeliverable address throws and leaves the route disarmed.
    func setMsi(address: UInt64, data: UInt32) throws(IrqFdError)

    /// Like `setMsi`, but the routing entry may join the partition's next
    /// coalesced commit instead of being pushed now (<doc:TheTwelveRules>, rule 8): until
    /// that push lands the route's signals are delivered in userspace, with
    /// the same masking and pending semantics. Many routes programmed one at
    /// a time then cost one push, not one each. Backends without coalescing
    /// do exactly what `setMsi` does.
    func setMsiDeferred(address: UInt64, data: UInt32) throws(IrqFdError)

    /// Disarms the route and removes its routing entry. Signals latch in the event.
    func clearMsi() throws(IrqFdError)

    /// Stops injection without touching the routing table; signals latch in the event.
    func mask() throws(IrqFdError)

    /// Resumes injection; a signal latched while masked is injected now.
    func unmask() throws(IrqFdError)

    /// Consumes signals latched while masked and says whether there were any.
    /// The caller keeps the answer (the MSI-X PBA): a second call returns false.
    func consumePending() -> Bool
}

extension IrqFdRoute {
    /// By default, pending state is exactly the event's counter.
    public func consumePending() -> Bool { event.tryWait() }

    /// Backends without coalesced commits program the entry at once.
    public func setMsiDeferred(address: UInt64, data: UInt32) throws(IrqFdError) {
        try setMsi(address: address, data: data)
    }

    /// Sets the MSI from a decoded message, deferred (see `setMsiDeferred(address:data:)`).
    public func setMsiDeferred(_ message: MsiMessage) throws(IrqFdError) {
        try setMsiDeferred(address: message.address, data: message.data)
    }

    /// Sets the MSI from a decoded message.
    public func setMsi(_ message: MsiMessage) throws(IrqFdError) {
        try setMsi(address: message.address, data: message.data)
    }
}
