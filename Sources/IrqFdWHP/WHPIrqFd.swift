public import IrqFdCore
public import IrqFdRelay
import Synchronization

/// The WHP backend: routes whose event is a WHP trigger's event, with the
/// full `IrqFdRoute` semantics even though WHP has no way to mask a trigger.
///
/// ## Why a route has two modes
///
/// WHP can create a trigger (and its event), retarget it live and delete it;
/// it cannot disable one, nor bind an existing event to a new trigger. So:
///
/// - Disarming a live trigger without losing signals is only possible by
///   deleting it: after `WHvDeleteTrigger` a signal no longer reaches the
///   partition and stays in the (still open) event, where userspace can see it.
/// - A deleted trigger's event can never again be delivered by the
///   hypervisor, and a new trigger would come with a new event — but a route's
///   `event` must stay the same object for its whole life (rule 2), because
///   devices and other processes hold it.
///
/// Hence each route is in one of two modes:
///
/// - **direct** — a live trigger carries the route's MSI; the hypervisor
///   delivers, no VMM code on the path. `setMsi` with a new message is one
///   `WHvUpdateTriggerParameters` (live retarget, same event); the same
///   message makes no call.
/// - **relayed** — the trigger was deleted; the partition's relay thread
///   watches the event and injects with `WHvRequestInterrupt`, exactly as the
///   relay backend does: masked or without an MSI it does not watch, so signals
///   latch in the event (never lost); `consumePending` drains it; `unmask`
///   watches again and anything latched is injected at once.
///
/// A direct route becomes relayed, once and for good, the first time it must
/// stop delivering: `mask`, `clearMsi`, or `setMsi` with a message WHP cannot
/// deliver. Deleting the trigger *is* the disarm, and a signal racing it is
/// either delivered by the hypervisor before `WHvDeleteTrigger` returns or
/// left in the event for `consumePending`/`unmask`.
///
/// `newRoute(msi:)` makes a direct route (a trigger created with that MSI) —
/// the MSI-X emulator's case, which makes a route when a vector first goes
/// live. `newRoute()` must hand out an event before any MSI exists, and WHP
/// has no disarmed trigger, so it creates a trigger and deletes it before its
/// event escapes: the route starts relayed, unarmed, with WHP's own event.
///
/// ## What a Windows machine must still confirm
///
/// The strategy runs here against `KVMTriggerModel`, which behaves as the
/// documentation says. The Windows binding (`WinHvPlatformTriggers`) is
/// compiled only on Windows and has never run; what CI checks without Windows
/// (Tools/whp-abi-check, mingw-w64) is that every WHP and Win32 call it and
/// `WaitPoller` make matches Microsoft's declarations, and that the bytes it
/// passes are the SDK's structure layouts. On Windows, check: that a
/// trigger's event stays signalled after `WHvDeleteTrigger` (documented: the
/// handle stays valid; the event semantics are those of any Win32 event); that
/// a signal consumed by the hypervisor before `WHvDeleteTrigger` returned has
/// been delivered by then; whether the event is auto- or manual-reset (the
/// binding resets it after each wait, which is right for both); and the
/// relay's Windows poller (`WaitPoller`, `WaitForMultipleObjects`), likewise
/// compiled only on Windows.
public final class WHPIrqFd<Provider: TriggerProvider>: IrqFd {
    /// The trigger API this partition programs.
    public let provider: Provider
    /// The relay serving routes whose trigger was deleted.
    public let relay: RelayIrqFd

    /// A partition over `provider`, relaying with `poller` (whose thread it owns).
    public init(provider: Provider, poller: any RelayPoller) throws(IrqFdError) {
        self.provider = provider
        relay = try RelayIrqFd(
            injector: RequestInterruptInjector(provider: provider), poller: poller,
            makeEvent: { () throws(IrqFdError) -> any Event in
                throw .unsupported("WHP route events come from WHvCreateTrigger")
            })
    }

    /// A route with no MSI, unarmed: its trigger is created and deleted before
    /// the event is handed out, so it starts relayed.
    public func newRoute() throws(IrqFdError) -> WHPIrqFdRoute<Provider> {
        // Any valid interrupt will do: the trigger dies before anyone can signal its event.
        let placeholder = WHPInterruptControl(
            type: .fixed, destinationMode: .physical, triggerMode: .edge, destination: 0, vector: 0x20)
        let (trigger, event) = try provider.createTrigger(placeholder)
        try provider.deleteTrigger(trigger)
        return WHPIrqFdRoute(event: event, mode: .relayed(relay.newRoute(adopting: event)), partition: self)
    }

    /// A direct route: a live trigger delivering `msi`. Throws, making nothing,
    /// if WHP cannot deliver `msi`.
    public func newRoute(msi: MsiMessage) throws(IrqFdError) -> WHPIrqFdRoute<Provider> {
        let (trigger, event) = try provider.createTrigger(WHPInterruptControl(msi))
        return WHPIrqFdRoute(event: event, mode: .direct(trigger, msi), partition: self)
    }

    /// See `IrqFd.newIrqFdRoute()`.
    public func newIrqFdRoute() throws(IrqFdError) -> any IrqFdRoute { try newRoute() }
}

/// A route of the WHP backend; see `WHPIrqFd` for its two modes.
public final class WHPIrqFdRoute<Provider: TriggerProvider>: IrqFdRoute {
    /// The trigger's event; the same object for the route's whole life.
    public let event: any Event
    /// The partition; kept alive by its routes.
    public let partition: WHPIrqFd<Provider>
    private let mode: Mutex<Mode>

    enum Mode {
        /// A live trigger delivering this MSI.
        case direct(Provider.Trigger, MsiMessage)
        /// Trigger deleted; the relay serves the event.
        case relayed(RelayIrqFdRoute)
    }

    init(event: any Event, mode: Mode, partition: WHPIrqFd<Provider>) {
        self.event = event
        self.mode = Mutex(mode)
        self.partition = partition
    }

    deinit {
        // Rule 12: the trigger goes (errors change nothing: no one to tell); a
        // relayed route stops being watched as its relay route is released.
        mode.withLock { m in
            if case .direct(let trigger, _) = m { try? partition.provider.deleteTrigger(trigger) }
        }
    }

    /// Whether a live trigger delivers this route (no VMM code on the path).
    public var isDirect: Bool {
        mode.withLock { if case .direct = $0 { true } else { false } }
    }

    /// The route's MSI, if one is set.
    public var msi: MsiMessage? {
        mode.withLock { m in
            switch m {
            case .direct(_, let msi): msi
            case .relayed(let route): route.msi
            }
        }
    }

    /// Deletes the trigger and hands the event to the relay, masked or not,
    /// with `msi` (nil: no MSI). The relay route is set up without arming
    /// before it can be unmasked, so nothing is injected out of turn.
    private func fallBack(_ m: inout Mode, trigger: Provider.Trigger, msi: MsiMessage?, masked: Bool) throws(IrqFdError)
    {
        try partition.provider.deleteTrigger(trigger)
        let route = partition.relay.newRoute(adopting: event)
        m = .relayed(route)
        try route.mask()
        if let msi { try route.setMsi(msi) }
        if !masked { try route.unmask() }
    }

    /// Direct: one `WHvUpdateTriggerParameters` (none if unchanged). A message
    /// WHP cannot deliver deletes the trigger (the route is left disarmed,
    /// relayed, without an MSI) and throws. Relayed: the relay's `setMsi`.
    public func setMsi(address: UInt64, data: UInt32) throws(IrqFdError) {
        let message = MsiMessage(address: address, data: data)
        try mode.withLock { (m: inout Mode) throws(IrqFdError) in
            switch m {
            case .direct(let trigger, let current):
                guard message != current else { return }
                let control: WHPInterruptControl
                do throws(IrqFdError) {
                    control = try WHPInterruptControl(message)
                } catch {
                    try fallBack(&m, trigger: trigger, msi: nil, masked: false)
                    throw error
                }
                try partition.provider.updateTrigger(trigger, to: control)
                m = .direct(trigger, message)
            case .relayed(let route):
                // The relay checks the address; WHP also refuses delivery modes it has no type for.
                if message.isDeliverable {
                    do throws(IrqFdError) {
                        _ = try WHPInterruptControl(message)
                    } catch {
                        try route.clearMsi()
                        throw error
                    }
                }
                try route.setMsi(message)
            }
        }
    }

    /// Direct: deletes the trigger (the disarm), leaving the route relayed
    /// without an MSI; signals latch in the event. Relayed: the relay's `clearMsi`.
    public func clearMsi() throws(IrqFdError) {
        try mode.withLock { (m: inout Mode) throws(IrqFdError) in
            switch m {
            case .direct(let trigger, _): try fallBack(&m, trigger: trigger, msi: nil, masked: false)
            case .relayed(let route): try route.clearMsi()
            }
        }
    }

    /// Direct: deletes the trigger and hands the event, masked, to the relay;
    /// signals from then on latch in the event. Relayed: the relay's `mask`.
    public func mask() throws(IrqFdError) {
        try mode.withLock { (m: inout Mode) throws(IrqFdError) in
            switch m {
            case .direct(let trigger, let msi): try fallBack(&m, trigger: trigger, msi: msi, masked: true)
            case .relayed(let route): try route.mask()
            }
        }
    }

    /// Direct: already unmasked. Relayed: the relay watches the event again
    /// and injects anything latched.
    public func unmask() throws(IrqFdError) {
        try mode.withLock { (m: inout Mode) throws(IrqFdError) in
            if case .relayed(let route) = m { try route.unmask() }
        }
    }
}
