public import IrqFdCore

/// What a route is, taken out of its partition so that a partition in
/// another VM (made by another process, over the same guest) can make the
/// same route over the same event: `RoutedIrqFd.newRoute(adopting:)`, then
/// `setMsi` and `mask` as recorded.
public struct RouteHandOffState: Sendable {
    /// The route's event, the object the new route adopts.
    public var event: any Event
    /// The MSI the route injects, if it has one.
    public var msi: MsiMessage?
    /// Whether the route is masked: the new route is masked too, and what
    /// latched in the event stays there.
    public var masked: Bool

    /// A route's state from its parts.
    public init(event: any Event, msi: MsiMessage?, masked: Bool) {
        self.event = event
        self.msi = msi
        self.masked = masked
    }
}

extension RoutedIrqFdRoute {
    /// The route's event, MSI and mask state, for a partition in another VM
    /// to adopt. Signals latched in the event (pending) stay in it: they move
    /// with the event.
    public var handOffState: RouteHandOffState { RouteHandOffState(event: event, msi: msi, masked: isMasked) }
}

extension RoutedIrqFd {
    /// Makes, in one batch (one table push), a route per state in `states`
    /// over its event: its MSI set, armed unless masked. An armed route's
    /// latched signals are injected when it is armed, after the push.
    public func adoptRoutes(_ states: [RouteHandOffState]) throws(IrqFdError) -> [RoutedIrqFdRoute<Kernel>] {
        try withBatch { () throws(IrqFdError) -> [RoutedIrqFdRoute<Kernel>] in
            var routes: [RoutedIrqFdRoute<Kernel>] = []
            for state in states {
                let route = try newRoute(adopting: state.event)
                if state.masked { try route.mask() }
                if let msi = state.msi { try route.setMsi(msi) }
                routes.append(route)
            }
            return routes
        }
    }
}
