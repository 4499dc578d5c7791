import IrqFdCore

/// The table's state, behind the partition's lock.
///
/// Deliberately not nested in the generic `RoutedIrqFd<Kernel>`: a nested type
/// is generic too, and every access from the unspecialised generic code then
/// looks its metadata up at run time (a tenth of a batch's CPU). Routes are
/// held as `AnyObject` for the same reason; only routes of the owning
/// partition are ever stored.
///
/// Batches belong to their caller: each open batch has an id, and each GSI
/// whose unpushed change was made inside a batch is owned by that batch
/// (`owner`). A push made by one caller carries its own changes and every
/// unowned change, and the kernel's entry (`pushed`) for GSIs that another
/// open batch owns; a failed push rolls back only what its caller owns, to
/// what each GSI held before that batch took it (`beforeBatch`), so a
/// deferred change waiting there is kept.
struct RoutingTableState {
    var allocator: GsiAllocator
    /// Each GSI's entries and flags, by GSI (see `GsiSlot`): one array, so a
    /// change to a GSI makes one uniqueness check and touches one cache line
    /// (five arrays cost five of each, a third of a retarget's table work).
    var slots: [GsiSlot]
    /// Each GSI's route, weakly: the routes a push or a rollback must arm or
    /// disarm. Upgraded to strong references only outside the lock, so no
    /// route's deinit ever runs under it (its deinit takes this lock). Kept apart from
    /// `slots`: a weak reference would make every slot non-trivial (each copy
    /// and move a side-table retain), and the steady retarget never reads it.
    var routes: [WeakRouteReference]
    /// GSIs changed outside any open batch and not yet in the kernel, each
    /// at most once (`GsiSlot.listed`): however a guest alternates its writes
    /// while pushes fail, it never holds more than the GSIs there are.
    var changed: [UInt32] = []
    /// The open batches.
    var batches: [BatchRecord] = []
    /// The next batch id (0 is "no batch").
    var nextBatch: UInt32 = 1
    /// The changes of the next push, kept to reuse its buffer.
    var changeScratch: [RoutingChange] = []
    /// Spare buffer for the GSIs a push carries (its result is returned, so
    /// this only holds one when a push failed).
    var carriedScratch: [UInt32] = []
    /// Spare buffer for the next batch's `touched` list (a batch of N changes
    /// then appends into room it already has, with no regrowth).
    var touchedScratch: [UInt32] = []
    /// GSIs with an entry in the kernel (non-nil `pushed`).
    var kernelEntries = 0
    /// A coalesced commit is scheduled (see `RoutedIrqFd.Coalescing`).
    var commitScheduled = false
    /// The last coalesced commit that failed, until one succeeds. While it is
    /// set, no push is made at once in a caller (a guest's write): the
    /// scheduled commit retries, and a guest cannot make a push per write.
    var commitError: IrqFdError?
    /// Routes whose arm failed after their entry reached the kernel, by GSI:
    /// each is retried once per `delay` by one retry, however many commits
    /// carried it.
    var retries: [UInt32: WeakRouteReference] = [:]
    /// A retry of `retries` is scheduled.
    var retryScheduled = false

    init(allocator: GsiAllocator, limit: Int) {
        self.allocator = allocator
        slots = Array(repeating: GsiSlot(), count: limit)
        routes = Array(repeating: WeakRouteReference(), count: limit)
    }

    /// Whether the kernel holds `gsi`'s entry for its current route.
    @inline(__always)
    func isLive(_ gsi: UInt32) -> Bool { slots[Int(gsi)].isLive }

    /// The index of open batch `id` in `batches`, if it is still open.
    @inline(__always)
    func batchIndex(_ id: UInt32) -> Int? {
        guard id != 0 else { return nil }
        return batches.firstIndex { $0.id == id }
    }

    /// Records `message` as `gsi`'s desired entry, made by `batch` (0: none),
    /// and sets its `steady` flag to `steady` (never on a stale GSI).
    @inline(__always)
    mutating func setDesired(_ gsi: UInt32, _ message: MsiMessage?, batch: Int?, steady: Bool = false) {
        let g = Int(gsi)
        if let batch {
            if slots[g].record(message, owner: batches[batch].id, steady: steady) {
                batches[batch].touched.append(gsi)
            }
        } else {
            _ = slots[g].record(message, owner: 0, steady: steady)
            // A guest writes an entry a field at a time (address, data, control):
            // its GSI is listed once, so the commit threshold counts entries, not
            // writes (3-4x as many pushes otherwise).
            list(gsi)
        }
    }

    /// Adds `gsi` to `changed` unless it is listed already.
    @inline(__always)
    mutating func list(_ gsi: UInt32) {
        let g = Int(gsi)
        guard !slots[g].listed else { return }
        slots[g].listed = true
        changed.append(gsi)
    }

    /// Takes `gsi` off `changed`, where it was listed last (a rollback of the change that listed it).
    mutating func unlistLast(_ gsi: UInt32) {
        guard changed.last == gsi else { return }
        changed.removeLast()
        slots[Int(gsi)].listed = false
    }

    /// Every change in `changed` reached the kernel (or belongs to a batch that pushes it): empties it.
    mutating func clearChanged() {
        for gsi in changed { slots[Int(gsi)].listed = false }
        changed.removeAll(keepingCapacity: true)
    }

    /// Whether `gsi` differs from what the kernel holds for its current route.
    func differs(_ gsi: UInt32) -> Bool {
        let slot = slots[Int(gsi)]
        return slot.desired != slot.pushed || (slot.stale && slot.desired != nil)
    }

    /// The state a rollback returns `gsi` to: what the kernel holds for its current route.
    func baseline(_ gsi: UInt32) -> MsiMessage? { slots[Int(gsi)].baseline }
}

/// One GSI's table state (trivial: copying or moving it makes no ARC); see
/// `RoutingTableState` for how batches own GSIs.
struct GsiSlot {
    /// What the table should hold.
    var desired: MsiMessage?
    /// What the kernel holds (the last successful push).
    var pushed: MsiMessage?
    /// The open batch whose unpushed change this GSI carries (0: none).
    var owner: UInt32 = 0
    /// Whether `pushed` belongs to a route since released: the GSI's current
    /// route never had that entry, so it is neither live nor a state to roll
    /// back to.
    var stale = false
    /// Whether the GSI is in `RoutingTableState.changed`.
    var listed = false
    /// What `desired` was when the batch that owns the GSI took it: a failed
    /// push of that batch returns the GSI here (a deferred change that was
    /// waiting is kept, not thrown away for what the kernel holds).
    var beforeBatch: MsiMessage?
    /// Whether the GSI's route needs nothing after the push that carries its
    /// batch's change: set by `setMsi` inside a batch on a route that is armed,
    /// not served, and keeps an entry (a retarget), so the push only swaps the
    /// message under an irqfd that stays armed. Any later change to the route
    /// clears it (`setEntry`, `setEntryDeferred`, `mask`, `release`); the
    /// batch's end then skips its reconcile (the retarget of 2048 live routes
    /// costs one push and little else).
    var steady = false

    /// Whether the kernel holds this GSI's entry for its current route.
    @inline(__always)
    var isLive: Bool { desired != nil && !stale && desired == pushed }

    /// The state a rollback returns the GSI to: what the kernel holds for its current route.
    @inline(__always)
    var baseline: MsiMessage? { stale ? nil : pushed }

    /// Sets `desired` to `message`, made by batch `id` (0: none), and `steady`
    /// (kept off on a stale GSI); returns whether `id` newly owns the GSI.
    @inline(__always)
    mutating func record(_ message: MsiMessage?, owner id: UInt32, steady: Bool) -> Bool {
        let taken = owner != id
        if taken, id != 0 { beforeBatch = desired }
        desired = message
        self.steady = steady && !stale
        guard taken else { return false }
        owner = id
        return id != 0
    }

    /// The push that carried this GSI landed: the kernel holds `desired`.
    /// Returns the change in the kernel's entry count.
    @inline(__always)
    mutating func landed() -> Int {
        let delta = (desired != nil ? 1 : 0) - (pushed != nil ? 1 : 0)
        pushed = desired
        owner = 0
        stale = false
        return delta
    }
}

extension Array where Element == UInt32 {
    /// Whether no element is greater than the one after it.
    var isSortedAscending: Bool {
        var i = 1
        while i < count {
            if self[i - 1] > self[i] { return false }
            i += 1
        }
        return true
    }
}

/// One open batch: its id and the GSIs it changed (may repeat; a GSI another
/// caller changed since is no longer this batch's and is skipped).
struct BatchRecord {
    var id: UInt32
    var touched: [UInt32] = []
}

/// A route, weakly.
///
/// `@unchecked Sendable`: it only ever holds a `RoutedIrqFdRoute`, which is
/// `Sendable` (all its state is behind its own lock); the field is typed
/// `AnyObject` only to keep generic metadata off the hot path.
struct WeakRouteReference: @unchecked Sendable {
    weak var route: AnyObject?
}

extension RoutingTableState {
    /// Whether enough changes wait that a coalesced commit is made at once, in
    /// the caller: `threshold` of them, or as many as the kernel holds entries,
    /// whichever is more. The second keeps the total kernel work O(N): each
    /// push copies the whole table, so pushing every `threshold` changes would
    /// copy O(N²/threshold) entries to bring N live one at a time; pushing when
    /// the waiting changes match the table doubles the table each time, and the
    /// kernel copies under 2N entries in all (2048 from none: pushes at 512,
    /// 1024 and 2048 entries, against 4 pushes of 512..2048 at a fixed 512).
    func commitsAtOnce<Kernel>(_ coalescing: RoutedIrqFd<Kernel>.Coalescing) -> Bool {
        changed.count >= max(coalescing.threshold, kernelEntries)
    }

    /// The routes on `gsis` that need a reconcile after the push that carried
    /// them (all but the steady ones, see `steady`); clears their `steady`.
    mutating func unsteadyRoutes(at gsis: [UInt32]) -> [WeakRouteReference] {
        var result: [WeakRouteReference] = []
        result.reserveCapacity(gsis.count)
        for gsi in gsis {
            let g = Int(gsi)
            if slots[g].steady {
                slots[g].steady = false
            } else {
                result.append(routes[g])
            }
        }
        return result
    }

    /// The routes registered on `gsis` (weakly), leaving out `except`.
    func routes(at gsis: [UInt32], except: UInt32? = nil) -> [WeakRouteReference] {
        var result: [WeakRouteReference] = []
        result.reserveCapacity(gsis.count)
        for gsi in gsis where gsi != except { result.append(routes[Int(gsi)]) }
        return result
    }
}
