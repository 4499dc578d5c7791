public import IrqFdCore
import Synchronization

/// The table's state, behind the partition's lock.
///
/// Deliberately not nested in the generic `RoutedIrqFd<Kernel>`: a nested type
/// is generic too, and every access from the unspecialised generic code then
/// looks its metadata up at run time (a tenth of a batch's CPU). Routes waiting
/// to be armed are held as `AnyObject` for the same reason; only routes of
/// the owning partition are ever stored.
struct RoutingTableState {
    var allocator: GsiAllocator
    /// What the table should hold, by GSI.
    var desired: [MsiMessage?]
    /// What the kernel holds, by GSI (the last successful push).
    var pushed: [MsiMessage?]
    var batchDepth = 0
    var dirty = false
    /// Routes to arm once their entry reaches the kernel (rule 9), by GSI.
    /// An array rather than a dictionary: ending a batch of thousands of
    /// routes then walks the waiting GSIs in order without hashing or
    /// sorting weak references (that sort was a third of a batch's CPU).
    var armAfterPush: [WeakRouteReference]
    /// GSIs registered in `armAfterPush` since the last batch ended (may repeat).
    var armQueue: [UInt32] = []
    /// GSIs whose `desired` entry changed since the last successful push
    /// (may repeat). A push copies just these into `pushed`: assigning the
    /// whole array would share its buffer, and the next change would copy
    /// every GSI's entry again.
    var changed: [UInt32] = []
    /// The entries of the next push, kept to reuse its buffer.
    var scratch: [RoutingEntry] = []

    init(allocator: GsiAllocator, limit: Int) {
        self.allocator = allocator
        desired = Array(repeating: nil, count: limit)
        pushed = desired
        armAfterPush = Array(repeating: WeakRouteReference(), count: limit)
    }

    func isLive(_ gsi: UInt32) -> Bool {
        desired[Int(gsi)] != nil && desired[Int(gsi)] == pushed[Int(gsi)]
    }

    mutating func setDesired(_ gsi: UInt32, _ message: MsiMessage?) {
        desired[Int(gsi)] = message
        changed.append(gsi)
    }

    mutating func waitToArm(_ gsi: UInt32, _ route: AnyObject) {
        armAfterPush[Int(gsi)] = WeakRouteReference(route: route)
        armQueue.append(gsi)
    }

    mutating func stopWaitingToArm(_ gsi: UInt32) {
        armAfterPush[Int(gsi)] = WeakRouteReference()
    }

    /// The routes waiting to be armed, in GSI order; clears the wait list.
    mutating func takeWaitingRoutes() -> [AnyObject] {
        guard !armQueue.isEmpty else { return [] }
        armQueue.sort()
        var routes: [AnyObject] = []
        routes.reserveCapacity(armQueue.count)
        var last: UInt32?
        for gsi in armQueue where gsi != last {
            last = gsi
            if let route = armAfterPush[Int(gsi)].route { routes.append(route) }
            armAfterPush[Int(gsi)] = WeakRouteReference()
        }
        armQueue.removeAll(keepingCapacity: true)
        return routes
    }
}

/// A route waiting to be armed; weak, so a queued route can still be released.
struct WeakRouteReference {
    weak var route: AnyObject?
}

/// The routing core shared by every backend whose kernel keeps a GSI routing
/// table (KVM, mshv): GSI allocation, the table with batches, and routes that
/// obey DESIGN.md's twelve rules. The kernel's encoding is `Kernel`'s business.
///
/// Locking (rule 11): each route has its own lock, taken before the table lock
/// and never after it. The table lock is held across a push, so the kernel's
/// table always matches `pushed`.
public final class RoutedIrqFd<Kernel: RoutingKernel>: IrqFd {
    /// The kernel interface this partition programs.
    public let kernel: Kernel
    let table: Mutex<TableState>
    private let pushCounter = Atomic<Int>(0)

    /// Not generic (see `RoutingTableState`).
    typealias TableState = RoutingTableState

    /// A partition over `kernel`'s GSI space and table.
    public init(kernel: Kernel) {
        self.kernel = kernel
        let allocator = GsiAllocator(
            limit: kernel.gsiLimit, reserved: kernel.reservedGsis, capacity: kernel.msiEntryCapacity)
        table = Mutex(TableState(allocator: allocator, limit: Int(kernel.gsiLimit)))
    }

    /// Makes a route on the lowest free GSI with a fresh event; no MSI, unarmed.
    public func newRoute() throws(IrqFdError) -> RoutedIrqFdRoute<Kernel> {
        let gsi = try table.withLock { (t: inout TableState) throws(IrqFdError) -> UInt32 in
            guard let gsi = t.allocator.allocate() else { throw .gsiExhausted(capacity: t.allocator.capacity) }
            return gsi
        }
        let event: any Event
        do throws(IrqFdError) {
            event = try kernel.makeEvent()
        } catch {
            table.withLock { $0.allocator.release(gsi) }
            throw error
        }
        return RoutedIrqFdRoute(gsi: gsi, event: event, partition: self)
    }

    /// See `IrqFd.newIrqFdRoute()`.
    public func newIrqFdRoute() throws(IrqFdError) -> any IrqFdRoute { try newRoute() }

    /// Defers pushes until the outermost batch ends; then pushes once and arms
    /// the routes that were waiting for their entries. Changes made before
    /// `body` threw are pushed too: each of them succeeded.
    public func withBatch<Result>(_ body: () throws(IrqFdError) -> Result) throws(IrqFdError) -> Result {
        table.withLock { $0.batchDepth += 1 }
        let result: Result
        do throws(IrqFdError) {
            result = try body()
        } catch {
            try? endBatch()
            throw error
        }
        try endBatch()
        return result
    }

    private func endBatch() throws(IrqFdError) {
        let toArm = try table.withLock { (t: inout TableState) throws(IrqFdError) -> [RoutedIrqFdRoute<Kernel>] in
            t.batchDepth -= 1
            guard t.batchDepth == 0 else { return [] }
            // In GSI order: the same batch makes the same calls every time. Only this
            // partition's routes are ever queued, so the downcast cannot fail.
            let waiting = t.takeWaitingRoutes().map { unsafeDowncast($0, to: RoutedIrqFdRoute<Kernel>.self) }
            if t.dirty {
                do throws(IrqFdError) {
                    try push(&t)
                } catch {
                    // Back to what the kernel holds, except GSIs freed meanwhile.
                    for gsi in t.desired.indices {
                        let restored = t.allocator.isTaken(UInt32(gsi)) ? t.pushed[gsi] : nil
                        if t.desired[gsi] != restored { t.setDesired(UInt32(gsi), restored) }
                    }
                    t.dirty = t.desired != t.pushed
                    throw error
                }
            }
            return waiting
        }
        var firstError: IrqFdError?
        for route in toArm {
            do throws(IrqFdError) { try route.armIfWanted() } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
    }

    /// Pushes `desired` whole, in one kernel call (rule 8). Table lock held.
    private func push(_ t: inout TableState) throws(IrqFdError) {
        var entries = t.scratch
        t.scratch = []  // `entries` holds the only reference: appending reuses the buffer
        entries.removeAll(keepingCapacity: true)
        entries.reserveCapacity(t.allocator.used)
        for (gsi, message) in t.desired.enumerated() {
            if let message { entries.append(RoutingEntry(gsi: UInt32(gsi), msi: message)) }
        }
        defer { t.scratch = entries }
        try kernel.pushRoutingTable(entries)
        for gsi in t.changed { t.pushed[Int(gsi)] = t.desired[Int(gsi)] }
        t.changed.removeAll(keepingCapacity: true)
        t.dirty = false
        pushCounter.add(1, ordering: .relaxed)
    }

    /// Sets the desired entry for `gsi` and pushes it unless a batch is open.
    /// If `route` is given and the entry does not reach the kernel now, the
    /// route is armed after the push that carries it. Returns the previous
    /// entry and whether the new one is live in the kernel.
    func setEntry(
        _ gsi: UInt32, to message: MsiMessage?, armAfterPush route: RoutedIrqFdRoute<Kernel>?
    ) throws(IrqFdError) -> (previous: MsiMessage?, live: Bool) {
        try table.withLock { (t: inout TableState) throws(IrqFdError) -> (previous: MsiMessage?, live: Bool) in
            let previous = t.desired[Int(gsi)]
            if message == nil { t.stopWaitingToArm(gsi) }
            if previous != message {
                t.setDesired(gsi, message)
                if t.batchDepth > 0 {
                    t.dirty = true
                } else {
                    do throws(IrqFdError) {
                        try push(&t)
                    } catch {
                        t.setDesired(gsi, previous)
                        throw error
                    }
                }
            }
            let live = t.isLive(gsi)
            if let route, message != nil, !live { t.waitToArm(gsi, route) }
            return (previous, live)
        }
    }

    /// Whether `gsi` has an entry, whether that entry is in the kernel, and if
    /// it is not yet, registers `route` to be armed after the push.
    func entryState(_ gsi: UInt32, armAfterPush route: RoutedIrqFdRoute<Kernel>?) -> (exists: Bool, live: Bool) {
        table.withLock { t in
            let exists = t.desired[Int(gsi)] != nil
            let live = t.isLive(gsi)
            if let route, exists, !live { t.waitToArm(gsi, route) }
            return (exists, live)
        }
    }

    /// The entry the table wants for `gsi` (nil: no MSI).
    public func entry(for gsi: UInt32) -> MsiMessage? { table.withLock { $0.desired[Int(gsi)] } }

    /// Removes `gsi`'s entry (pushing unless batched; a failed push is left to
    /// the next one) and frees the GSI. Used when a route is released.
    func release(_ gsi: UInt32) {
        table.withLock { t in
            t.stopWaitingToArm(gsi)
            if t.desired[Int(gsi)] != nil {
                t.setDesired(gsi, nil)
                if t.batchDepth > 0 {
                    t.dirty = true
                } else {
                    do { try push(&t) } catch { t.dirty = true }
                }
            }
            t.allocator.release(gsi)
        }
    }

    /// Routing-table pushes made so far.
    public var pushCount: Int { pushCounter.load(ordering: .relaxed) }
    /// GSIs that can still be handed out.
    public var freeGsiCount: Int { table.withLock { $0.allocator.free } }
    /// How many routes can be live at once.
    public var gsiCapacity: Int { table.withLock { $0.allocator.capacity } }
    /// The entries the kernel holds now, by GSI (for tests and save/restore).
    public var pushedEntries: [RoutingEntry] {
        table.withLock { t in
            t.pushed.enumerated().compactMap { gsi, msi in msi.map { RoutingEntry(gsi: UInt32(gsi), msi: $0) } }
        }
    }
}

/// A route's own state, behind its lock.
struct RoutedRouteState {
    var masked = false
    var armed = false
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
    public func setMsi(address: UInt64, data: UInt32) throws(IrqFdError) {
        let message = MsiMessage(address: address, data: data)
        guard partition.kernel.canDeliver(message) else {
            try clearMsi()
            throw .undeliverableAddress(address)
        }
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            let wantsArm = !s.masked && !s.armed
            let (previous, live) = try partition.setEntry(gsi, to: message, armAfterPush: wantsArm ? self : nil)
            guard wantsArm, live else { return }
            do throws(IrqFdError) {
                try partition.kernel.assign(event: event, gsi: gsi)
                s.armed = true
            } catch {
                // Rule 10: the table goes back to what it was before this call.
                if previous != message { _ = try? partition.setEntry(gsi, to: previous, armAfterPush: nil) }
                throw error
            }
        }
    }

    /// Rule 6: disarm first, then remove the entry.
    public func clearMsi() throws(IrqFdError) {
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            guard partition.entryState(gsi, armAfterPush: nil).exists else {
                return
            }
            let wasArmed = s.armed
            if wasArmed {
                try partition.kernel.deassign(event: event, gsi: gsi)
                s.armed = false
            }
            do throws(IrqFdError) {
                _ = try partition.setEntry(gsi, to: nil, armAfterPush: nil)
            } catch {
                if wasArmed, (try? partition.kernel.assign(event: event, gsi: gsi)) != nil { s.armed = true }
                throw error
            }
        }
    }

    /// Rule 4: one disarm, no table push.
    public func mask() throws(IrqFdError) {
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            guard !s.masked else { return }
            if s.armed {
                try partition.kernel.deassign(event: event, gsi: gsi)
                s.armed = false
            }
            s.masked = true
        }
    }

    /// Rule 5: re-arm; the kernel injects whatever latched meanwhile.
    public func unmask() throws(IrqFdError) {
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            guard s.masked else { return }
            if !s.armed, partition.entryState(gsi, armAfterPush: self).live {
                try partition.kernel.assign(event: event, gsi: gsi)
                s.armed = true
            }
            s.masked = false
        }
    }

    /// Arms the route if it should be armed: called after a batch's push.
    func armIfWanted() throws(IrqFdError) {
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            guard !s.masked, !s.armed, partition.entryState(gsi, armAfterPush: nil).live else { return }
            try partition.kernel.assign(event: event, gsi: gsi)
            s.armed = true
        }
    }
}
