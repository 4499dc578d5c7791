public import IrqFdCore
import Synchronization

/// A route's own state, behind its lock.
struct RoutedRouteState {
    var masked = false
    var armed = false
    /// The interim (userspace) route over this route's event, made on first need.
    var interim: (any IrqFdRoute)?
    /// Whether `interim` is delivering this route's signals now.
    var serving = false
    /// The message `interim` delivers while `serving`.
    var servedMessage: MsiMessage?
}

/// A route of a `RoutedIrqFd`: one GSI, one event, one routing entry.
public final class RoutedIrqFdRoute<Kernel: RoutingKernel>: IrqFdRoute {
    /// The GSI this route owns until it is released.
    public let gsi: UInt32
    /// The route's event; the same object for its whole life (rule 2).
    public let event: any Event
    /// The partition that made the route; kept alive by it, so its GSI can be freed.
    public let partition: RoutedIrqFd<Kernel>
    private let state = Mutex(RouteState())

    /// Not generic, for the reason given at `RoutingTableState`.
    typealias RouteState = RoutedRouteState

    init(gsi: UInt32, event: any Event, partition: RoutedIrqFd<Kernel>) {
        self.gsi = gsi
        self.event = event
        self.partition = partition
    }

    deinit {
        // Rule 12: disarm, remove the entry, free the GSI; the event closes with us.
        // Errors (the VM may be gone) change nothing here: there is no one to tell.
        let interim = state.withLock { s in
            if s.serving { try? s.interim?.clearMsi() }
            s.serving = false
            defer { s.interim = nil }
            return s.interim
        }
        _ = consume interim  // its deinit (it stops watching) runs outside our lock
        if state.withLock({ $0.armed }) {
            try? partition.kernel.deassign(event: event, gsi: gsi)
        }
        partition.release(gsi)
    }

    /// Whether the route is masked.
    public var isMasked: Bool { state.withLock { $0.masked } }
    /// Whether the event is armed in the kernel (has an MSI, is not masked, entry pushed).
    public var isArmed: Bool { state.withLock { $0.armed } }
    /// The route's MSI, if one is set.
    public var msi: MsiMessage? { partition.entry(for: gsi) }

    /// Rules 3 and 7: entry first, then arm; unchanged makes no call; an
    /// undeliverable address leaves the route disarmed and without an entry.
    /// An entry still waiting for a coalesced commit is pushed now.
    public func setMsi(address: UInt64, data: UInt32) throws(IrqFdError) {
        let message = MsiMessage(address: address, data: data)
        guard partition.canDeliver(message) else {
            try clearMsi()
            throw .undeliverableAddress(address)
        }
        let batch = partition.currentBatch
        let (others, failure) = state.withLock { (s: inout RouteState) -> ([WeakRouteReference], IrqFdError?) in
            let wantsArm = !s.masked && !s.armed
            let (previous, live, others): (MsiMessage?, Bool, [WeakRouteReference])
            do throws(IrqFdError) {
                (previous, live, others) = try partition.setEntry(
                    gsi, to: message, batch: batch, armed: s.armed && !s.serving)
            } catch {
                return ([], error)  // the entry is as it was, and so is any serving
            }
            do throws(IrqFdError) {
                if s.serving {
                    if live {
                        // Hand over (rule 9: the push is done): stop the relay, then arm below.
                        try stopServing(&s)
                    } else {
                        try serve(&s, message)  // in a batch: keep serving, with the new message
                    }
                }
            } catch {
                return (others, error)
            }
            guard wantsArm, live else { return (others, nil) }
            do throws(IrqFdError) {
                try partition.kernel.assign(event: event, gsi: gsi)
                s.armed = true
            } catch {
                // Rule 10: the table goes back to what it was before this call.
                var carried = others
                if previous != message, let rolledBack = try? partition.setEntry(gsi, to: previous, batch: batch) {
                    carried += rolledBack.others
                }
                // Not armed: a route that keeps an entry is served, never deaf.
                settle(&s)
                return (carried, error)
            }
            return (others, nil)
        }
        partition.reconcileCarried(others)
        if let failure { throw failure }
    }

    /// Rule 6: disarm first, then remove the entry.
    public func clearMsi() throws(IrqFdError) {
        let batch = partition.currentBatch
        let (others, failure) = state.withLock { (s: inout RouteState) -> ([WeakRouteReference], IrqFdError?) in
            guard partition.entryInfo(gsi).desired != nil else { return ([], nil) }
            let wasArmed = s.armed
            do throws(IrqFdError) {
                if s.serving { try stopServing(&s) }
                if wasArmed {
                    try partition.kernel.deassign(event: event, gsi: gsi)
                    s.armed = false
                }
            } catch {
                return ([], error)
            }
            do throws(IrqFdError) {
                return (try partition.setEntry(gsi, to: nil, batch: batch).others, nil)
            } catch {
                if wasArmed, (try? partition.kernel.assign(event: event, gsi: gsi)) != nil { s.armed = true }
                settle(&s)
                return ([], error)
            }
        }
        partition.reconcileCarried(others)
        if let failure { throw failure }
    }

    /// Rule 4: one disarm, no table push.
    public func mask() throws(IrqFdError) {
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            guard !s.masked else { return }
            if s.armed {
                try partition.kernel.deassign(event: event, gsi: gsi)
                s.armed = false
                partition.unsteady(gsi)
            }
            if s.serving { try stopServing(&s) }
            s.masked = true
        }
    }

    /// Rule 5: re-arm; the kernel injects whatever latched meanwhile. If the
    /// entry is not in the kernel yet, the push that carries it arms the route.
    public func unmask() throws(IrqFdError) {
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            guard s.masked else { return }
            if !s.armed {
                let (desired, live) = partition.entryInfo(gsi)
                if live {
                    try partition.kernel.assign(event: event, gsi: gsi)
                    s.armed = true
                } else if let desired, partition.coalescing != nil {
                    // The entry waits for a coalesced commit: serve it until the push lands.
                    try serve(&s, desired)
                }
            }
            s.masked = false
        }
    }

    /// Brings the route in line with the table: called after a push or a
    /// rollback that involved its GSI. Armed only with an entry the kernel
    /// holds; armed whenever it is unmasked and has one. On a coalescing
    /// partition an unmasked route whose entry waits is served, with the
    /// entry the table holds now (a rolled-back batch may have changed it).
    func reconcile() throws(IrqFdError) {
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            let (desired, live) = partition.entryInfo(gsi)
            if s.serving, live || desired == nil || s.masked {
                // Rule 9: the push has landed; stop the relay first, then arm. A signal
                // between the two latches in the event and the arm injects it.
                try stopServing(&s)
            }
            if s.armed, desired == nil {
                try partition.kernel.deassign(event: event, gsi: gsi)
                s.armed = false
            }
            guard !s.masked, !s.armed, let desired else { return }
            if live {
                do throws(IrqFdError) {
                    try partition.kernel.assign(event: event, gsi: gsi)
                    s.armed = true
                } catch {
                    // Not armed, and the interim was stopped above: serve again
                    // (a coalescing partition), or the route's signals would only
                    // latch until the next reconcile.
                    if partition.coalescing != nil { try? serve(&s, desired) }
                    throw error
                }
            } else if partition.coalescing != nil {
                try serve(&s, desired)
            }
        }
    }

    /// Like `setMsi`, but the entry joins the partition's next coalesced
    /// commit; until it lands the route's signals are served in userspace
    /// (see `RoutedIrqFd.Coalescing`). Without coalescing, this is `setMsi`.
    public func setMsiDeferred(address: UInt64, data: UInt32) throws(IrqFdError) {
        guard let coalescing = partition.coalescing, partition.currentBatch == 0 else {
            return try setMsi(address: address, data: data)
        }
        let message = MsiMessage(address: address, data: data)
        guard partition.canDeliver(message) else {
            try clearMsi()
            throw .undeliverableAddress(address)
        }
        let (others, failure) = state.withLock { (s: inout RouteState) -> ([WeakRouteReference], IrqFdError?) in
            let (previous, live, others) = partition.setEntryDeferred(gsi, to: message, coalescing: coalescing)
            do throws(IrqFdError) {
                if live {
                    if s.serving { try stopServing(&s) }
                    if !s.masked, !s.armed {
                        try partition.kernel.assign(event: event, gsi: gsi)
                        s.armed = true
                    }
                } else {
                    // The kernel still holds the old entry (or none): stop injecting it.
                    if s.armed {
                        try partition.kernel.deassign(event: event, gsi: gsi)
                        s.armed = false
                    }
                    if !s.masked { try serve(&s, message) }
                }
            } catch {
                // Rule 10: back to the previous entry (still waiting, or still in the kernel).
                let rolledBack = partition.setEntryDeferred(gsi, to: previous, coalescing: coalescing)
                settle(&s)
                return (others + rolledBack.others, error)
            }
            return (others, nil)
        }
        partition.reconcileCarried(others)
        if let failure { throw failure }
    }

    /// After a failed call on a coalescing partition: a route that is not
    /// masked and keeps an entry but is not armed is served, so its signals
    /// still arrive; if that entry is in the kernel already, no commit will
    /// reconcile the route, so its arm is retried (`RoutedIrqFd.retryLater`).
    /// A route without an entry, or masked, is not served. Route lock held.
    private func settle(_ s: inout RouteState) {
        guard partition.coalescing != nil, !s.armed else { return }
        let (desired, live) = partition.entryInfo(gsi)
        guard let desired, !s.masked else {
            if s.serving { try? stopServing(&s) }
            return
        }
        try? serve(&s, desired)
        if live { partition.retryLater([WeakRouteReference(route: self)]) }
    }

    /// Starts (or retargets) the interim delivery of this route's signals;
    /// makes no call if it delivers `message` already. Route lock held.
    private func serve(_ s: inout RouteState, _ message: MsiMessage) throws(IrqFdError) {
        guard let coalescing = partition.coalescing else { return }
        if s.serving, s.servedMessage == message { return }
        let interim: any IrqFdRoute
        if let existing = s.interim {
            interim = existing
        } else {
            interim = try coalescing.interim.serve(event)
            s.interim = interim
        }
        try interim.setMsi(message)
        s.serving = true
        s.servedMessage = message
    }

    /// Stops the interim delivery; once it returns, no injection is in flight. Route lock held.
    private func stopServing(_ s: inout RouteState) throws(IrqFdError) {
        try s.interim?.clearMsi()
        s.serving = false
        s.servedMessage = nil
    }

    /// Whether the route's signals are being delivered in userspace while its entry waits for a commit.
    public var isServed: Bool { state.withLock { $0.serving } }

    /// What breaks the invariant every operation keeps, if anything (nil:
    /// it holds). On a coalescing partition: a route with an entry that is
    /// not masked is armed in the kernel or served by the interim, never both;
    /// any other route is neither; an armed route's entry is in the kernel.
    /// Without coalescing: never served, and armed only unmasked with an
    /// entry. Only meaningful outside any open batch. A test seam.
    package var invariantViolation: String? {
        state.withLock { s -> String? in
            let (desired, live) = partition.entryInfo(gsi)
            let wanted = desired != nil && !s.masked
            let what = "GSI \(gsi) (masked \(s.masked), entry \(desired.map { "\($0)" } ?? "none"), live \(live))"
            if s.armed, s.serving { return "\(what) is armed and served" }
            if s.armed, !wanted { return "\(what) is armed" }
            guard partition.coalescing != nil else { return s.serving ? "\(what) is served without coalescing" : nil }
            if s.armed, !live { return "\(what) is armed without its entry in the kernel" }
            if wanted, !s.armed, !s.serving { return "\(what) is deaf: neither armed nor served" }
            if !wanted, s.serving { return "\(what) is served" }
            return nil
        }
    }
}
