public import IrqFdCore

// An MSI-X function handed from one VMM to its successor, which runs the same
// guest in a VM of its own: the table, control bits and PBA move as
// `MsixSavedState`; each vector's event moves as itself (a descriptor passed
// over a Unix socket), so a device holding it (a vhost-user backend's call
// fd) never learns of the move and nothing it signals is lost.

extension MsixEmulator {
    /// Each vector's event, for the vectors that have a route: what a
    /// successor's `restore(_:adopting:)` takes. Signals latched in them stay
    /// there.
    public var handOffEvents: [Int: any Event] {
        state.withLock { s in
            var events: [Int: any Event] = [:]
            for (v, vector) in s.vectors.enumerated() { if let route = vector.route { events[v] = route.event } }
            return events
        }
    }

    /// Restores `saved` onto a fresh emulator (one that has made no route)
    /// with each vector of `events` routed over the event given, which its
    /// partition adopts (`IrqFd.newIrqFdRoute(adopting:)`): the routes are
    /// programmed in one batch as `restore(_:)` does. Signals latched in the
    /// events while no VM listened are not drained: a live vector's reach the
    /// guest as one interrupt when its route is armed, a masked vector's
    /// show in its PBA bit at the next PBA read, and an unmask then delivers
    /// them once (PCI Local Bus spec 6.8.2.9: pending while masked, sent on
    /// unmask). A saved pending bit of a live vector is delivered once, with
    /// whatever latched (one bit, one interrupt).
    public func restore(_ saved: MsixSavedState, adopting events: [Int: any Event]) throws(MsixError) {
        try check(saved)
        guard let partition else {
            if events.isEmpty { return try restore(saved) }
            throw .routing(.unsupported("userspace MSI-X delivery has no per-vector events to adopt"))
        }
        let error = state.withLock { s -> IrqFdError? in
            if let v = s.vectors.indices.first(where: { s.vectors[$0].route != nil }) {
                return .unsupported("vector \(v) already has a route: adopt only into a fresh emulator")
            }
            var firstError: IrqFdError?
            for (v, event) in events.sorted(by: { $0.key < $1.key }) where s.vectors.indices.contains(v) {
                do throws(IrqFdError) {
                    // Masked (disarmed, no call: the route is new) until reconcile
                    // brings the vector live: what latched stays in the event.
                    let route = try partition.newIrqFdRoute(adopting: event)
                    try route.mask()
                    s.vectors[v].route = route
                    s.vectors[v].programmed = nil
                    s.vectors[v].accepted = false
                } catch {
                    note(error, &s)
                    firstError = firstError ?? error
                }
            }
            let error = apply(saved, &s)
            return firstError ?? error
        }
        if let error { throw .routing(error) }
    }
}
