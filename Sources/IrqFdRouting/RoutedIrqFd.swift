public import IrqFdCore
import Synchronization

/// The routing core shared by every backend whose kernel keeps a GSI routing
/// table (KVM, mshv): GSI allocation, the table with batches, and routes that
/// obey the twelve route rules (IrqFdCore's `TheTwelveRules` article). The
/// kernel's encoding is `Kernel`'s business.
///
/// Locking (rule 11): each route has its own lock, taken before the table lock
/// and never after it. The table lock is held across a push, so the kernel's
/// table always matches `pushed`. Routes that a push (or a rollback) leaves
/// to be armed are armed after both locks are released, each under its own
/// lock: never one route's lock inside another's.
///
/// No error is reported (`Coalescing.onCommitError`) on a caller's thread: a
/// caller may hold its own lock (the MSI-X emulator holds its lock across
/// route calls), and a reporter that calls back into it would take that lock
/// again. Reports go through `Coalescing.timer.soon`.
public final class RoutedIrqFd<Kernel: RoutingKernel>: IrqFd {
    /// The kernel interface this partition programs.
    public let kernel: Kernel
    let table: Mutex<TableState>
    let pushCounter = Atomic<Int>(0)

    /// Not generic (see `RoutingTableState`).
    typealias TableState = RoutingTableState

    /// How deferred changes are committed, if this partition coalesces them.
    public let coalescing: Coalescing?

    /// `kernel.canDeliver(message)`, with the kernel borrowed in place:
    /// reading the generic `kernel` as a plain value copies it (a retain and
    /// a release, two atomics) on every `setMsi`, which a batch of retargets
    /// pays thousands of times.
    func canDeliver(_ message: MsiMessage) -> Bool { Self.canDeliver(kernel, message) }

    private static func canDeliver(_ kernel: borrowing Kernel, _ message: MsiMessage) -> Bool {
        kernel.canDeliver(message)
    }

    /// deferred changes and drops are committed together (see `Coalescing`).
    public init(kernel: Kernel, coalescing: Coalescing? = nil) {
        self.kernel = kernel
        self.coalescing = coalescing
        let allocator = GsiAllocator(
            limit: kernel.gsiLimit, reserved: kernel.reservedGsis, capacity: kernel.msiEntryCapacity)
        table = Mutex(TableState(allocator: allocator, limit: Int(kernel.gsiLimit)))
    }

    /// Makes a route on the lowest free GSI with a fresh event; no MSI, unarmed.
    public func newRoute() throws(IrqFdError) -> RoutedIrqFdRoute<Kernel> { try newRoute(event: nil) }

    /// Makes a route on the lowest free GSI over `event`, an event made
    /// elsewhere (another process's, passed over a Unix socket; a VMM
    /// handing its guest over passes its routes' events so): no MSI, unarmed.
    /// Signals already latched in `event` are kept: the route injects them
    /// once it is armed. The route keeps `event` alive as long as it lives.
    public func newRoute(adopting event: any Event) throws(IrqFdError) -> RoutedIrqFdRoute<Kernel> {
        try newRoute(event: event)
    }

    private func newRoute(event adopted: (any Event)?) throws(IrqFdError) -> RoutedIrqFdRoute<Kernel> {
        let gsi = try table.withLock { (t: inout TableState) throws(IrqFdError) -> UInt32 in
            guard let gsi = t.allocator.allocate() else { throw .gsiExhausted(capacity: t.allocator.capacity) }
            return gsi
        }
        let event: any Event
        do throws(IrqFdError) {
            if let adopted { event = adopted } else { event = try kernel.makeEvent() }
        } catch {
            table.withLock { $0.allocator.release(gsi) }
            throw error
        }
        let route = RoutedIrqFdRoute(gsi: gsi, event: event, partition: self)
        table.withLock { $0.routes[Int(gsi)] = WeakRouteReference(route: route) }
        return route
    }

    /// See `IrqFd.newIrqFdRoute()`.
    public func newIrqFdRoute() throws(IrqFdError) -> any IrqFdRoute { try newRoute() }

    /// See `IrqFd.newIrqFdRoute(adopting:)`.
    public func newIrqFdRoute(adopting event: any Event) throws(IrqFdError) -> any IrqFdRoute {
        try newRoute(adopting: event)
    }

    /// The caller's open batch on this partition (0: none).
    var currentBatch: UInt32 { OpenBatches.current(ObjectIdentifier(self)) }

    /// See `IrqFd.coalescesDeferredChanges`: true when made with `coalescing`.
    public var coalescesDeferredChanges: Bool { coalescing != nil }

    /// Defers this caller's pushes until its outermost batch ends; then pushes
    /// once and arms the routes that were waiting for their entries. Changes
    /// made before `body` threw are pushed too: each of them succeeded.
    ///
    /// The batch is the caller's (this thread or task): other threads' changes
    /// meanwhile push on their own, and a failed push here rolls back only the
    /// changes made inside this batch.
    public func withBatch<Result>(_ body: () throws(IrqFdError) -> Result) throws(IrqFdError) -> Result {
        let me = ObjectIdentifier(self)
        if OpenBatches.current(me) != 0 { return try body() }
        let id = table.withLock { t in
            let id = t.nextBatch
            t.nextBatch = t.nextBatch == .max ? 1 : t.nextBatch + 1
            var record = BatchRecord(id: id)
            swap(&record.touched, &t.touchedScratch)
            t.batches.append(record)
            return id
        }
        var outcome: Swift.Result<Result, IrqFdError>?
        OpenBatches.with(.init(partition: me, id: id)) {
            do throws(IrqFdError) { outcome = .success(try body()) } catch { outcome = .failure(error) }
        }
        let ended = endBatch(id)
        switch outcome! {
        case .success(let result):
            if let ended { throw ended }
            return result
        case .failure(let error):
            throw error
        }
    }

    /// Closes batch `id`: pushes its changes (if any), or rolls them back if
    /// the push fails; then brings every route it changed in line with the
    /// kernel. Returns the first error of those: only this batch's own.
    ///
    /// The push also carries entries other callers deferred; their routes
    /// are armed like any carried by a coalesced commit (`reconcileCarried`),
    /// so an arm that fails there is reported and retried, not thrown at
    /// this caller, whose own change landed. On a coalescing partition a
    /// batch with no change of its own pushes nothing: the scheduled commit
    /// carries what waits.
    private func endBatch(_ id: UInt32) -> IrqFdError? {
        var schedule = false
        let (touched, foreign, error) = table.withLock {
            (t: inout TableState) -> ([WeakRouteReference], [WeakRouteReference], IrqFdError?) in
            guard let index = t.batchIndex(id) else { return ([], [], nil) }
            var mine = t.batches.remove(at: index).touched
            mine.removeAll { t.slots[Int($0)].owner != id }
            defer {
                // Its buffer serves the next batch.
                mine.removeAll(keepingCapacity: true)
                if mine.capacity > t.touchedScratch.capacity { t.touchedScratch = mine }
            }
            guard !mine.isEmpty || (coalescing == nil && !t.changed.isEmpty) else { return ([], [], nil) }
            let carriesOthers = !t.changed.isEmpty
            do throws(IrqFdError) {
                let carried = try push(&t, batch: id, owned: mine)
                guard carriesOthers else { return (t.unsteadyRoutes(at: carried), [], nil) }
                // Split what the push carried into this batch's GSIs and the others'.
                if !mine.isSortedAscending { mine.sort() }
                var own: [UInt32] = []
                var others: [UInt32] = []
                var m = 0
                for gsi in carried {
                    while m < mine.count, mine[m] < gsi { m += 1 }
                    if m < mine.count, mine[m] == gsi { own.append(gsi) } else { others.append(gsi) }
                }
                return (t.unsteadyRoutes(at: own), t.routes(at: others), nil)
            } catch {
                // Back to what each GSI held before this batch took it.
                for gsi in mine {
                    let g = Int(gsi)
                    t.slots[g].steady = false
                    t.slots[g].desired = t.slots[g].beforeBatch
                    t.slots[g].owner = 0
                    if t.differs(gsi) { t.list(gsi) }
                }
                if coalescing != nil, !t.changed.isEmpty, !t.commitScheduled {
                    t.commitScheduled = true
                    schedule = true
                }
                mine.sort()
                return (t.routes(at: mine), [], error)
            }
        }
        if schedule, let coalescing { scheduleCommit(after: coalescing.delay) }
        reconcileCarried(foreign)
        var firstError = error
        if let armError = reconcile(touched) { firstError = firstError ?? armError }
        return firstError
    }

    /// Brings each route in line with the table (arms what should be armed);
    /// called with no lock held, for routes whose caller waits. Returns the
    /// first error, for the caller; on a coalescing partition a route whose
    /// arm failed is served meanwhile and its arm retried (`retryLater`), so
    /// it is not left to the relay for good.
    func reconcile(_ routes: [WeakRouteReference]) -> IrqFdError? {
        var firstError: IrqFdError?
        var failed: [WeakRouteReference] = []
        for reference in routes {
            guard let object = reference.route else { continue }
            // Only this partition's routes are ever registered, so the downcast cannot fail.
            let route = unsafeDowncast(object, to: RoutedIrqFdRoute<Kernel>.self)
            do throws(IrqFdError) { try route.reconcile() } catch {
                firstError = firstError ?? error
                failed.append(reference)
            }
        }
        if !failed.isEmpty, coalescing != nil { retryLater(failed) }
        return firstError
    }

    /// Pushes the table in one kernel call (rule 8): every GSI's desired
    /// entry, except that a GSI owned by another open batch keeps what the
    /// kernel holds. `owned` lists the GSIs `batch` owns. Table lock held.
    /// Returns the GSIs whose entries changed in the kernel, in GSI order.
    ///
    /// O(changed GSIs) of Swift work: only the GSIs in
    /// `changed` and `owned` can differ from what the kernel holds (every
    /// other GSI's desired entry equals `pushed`, or belongs to another open
    /// batch), so the push hands the kernel just their differences. A kernel
    /// that keeps its encoded table (KVM) applies them in place; others get
    /// the whole table, built here only when they ask for it.
    func push(_ t: inout TableState, batch: UInt32, owned: [UInt32]) throws(IrqFdError) -> [UInt32] {
        var carried: [UInt32]
        if t.changed.isEmpty {
            carried = owned  // shared, not copied: only an unsorted list is written to
        } else {
            carried = t.changed
            carried.append(contentsOf: owned)
        }
        // A batch's changes usually come in GSI order: then there is nothing to sort.
        if !carried.isSortedAscending { carried.sort() }
        var unique = t.carriedScratch
        t.carriedScratch = []
        unique.removeAll(keepingCapacity: true)
        var changes = t.changeScratch
        t.changeScratch = []
        changes.removeAll(keepingCapacity: true)
        for gsi in carried where gsi != unique.last {
            let slot = t.slots[Int(gsi)]
            guard slot.owner == 0 || slot.owner == batch else { continue }
            unique.append(gsi)
            if slot.desired != slot.pushed {
                if let message = slot.desired {
                    changes.append(.set(RoutingEntry(gsi: gsi, msi: message)))
                } else {
                    changes.append(.remove(gsi: gsi))
                }
            }
        }
        defer {
            t.changeScratch = changes
        }
        do throws(IrqFdError) {
            try kernel.pushRoutingChanges(changes) { Self.wholeTable(t, batch: batch) }
        } catch {
            t.carriedScratch = unique
            throw error
        }
        for gsi in unique { t.kernelEntries += t.slots[Int(gsi)].landed() }
        t.clearChanged()
        pushCounter.add(1, ordering: .relaxed)
        return unique
    }

    /// The whole table a push makes, sorted by GSI: every GSI's desired
    /// entry, but what the kernel holds for GSIs another open batch owns.
    /// O(GSIs); only kernels that cannot apply changes ask for it.
    private static func wholeTable(_ t: borrowing TableState, batch: UInt32) -> [RoutingEntry] {
        var entries: [RoutingEntry] = []
        entries.reserveCapacity(t.allocator.used)
        let othersOpen = t.batches.contains { $0.id != batch }
        for gsi in 0..<t.slots.count {
            let slot = t.slots[gsi]
            let own = !othersOpen || slot.owner == 0 || slot.owner == batch
            if let message = own ? slot.desired : slot.pushed {
                entries.append(RoutingEntry(gsi: UInt32(gsi), msi: message))
            }
        }
        return entries
    }

    /// Sets the desired entry for `gsi` and pushes it unless the caller has a
    /// batch open. Returns the previous entry, whether the new one is live in
    /// the kernel, and the other routes the push carried (to reconcile once
    /// the caller's route lock is released).
    ///
    /// Outside a batch an entry that is not in the kernel is pushed even when
    /// unchanged: `setMsi` promises the entry in the kernel on return, and a
    /// deferred entry (`setMsiDeferred`) given again with the same message
    /// would otherwise be neither pushed nor armed, its route no longer served.
    ///
    /// `armed`: the caller's route is armed and not served (see `steady`).
    func setEntry(
        _ gsi: UInt32, to message: MsiMessage?, batch: UInt32, armed: Bool = false
    ) throws(IrqFdError) -> EntryChange {
        try table.withLock { (t: inout TableState) throws(IrqFdError) -> EntryChange in
            let g = Int(gsi)
            let previous = t.slots[g].desired
            var others: [WeakRouteReference] = []
            if let index = t.batchIndex(batch) {
                if previous != message {
                    t.setDesired(gsi, message, batch: index, steady: armed && previous != nil && message != nil)
                }
            } else if previous != message || (message != nil && !t.isLive(gsi)) {
                let previousOwner = t.slots[g].owner
                let wasListed = t.slots[g].listed
                t.setDesired(gsi, message, batch: nil)
                do throws(IrqFdError) {
                    let carried = try push(&t, batch: 0, owned: [])
                    others = t.routes(at: carried, except: gsi)
                } catch {
                    t.slots[g].desired = previous
                    if !wasListed { t.unlistLast(gsi) }
                    if t.batchIndex(previousOwner) != nil {
                        t.slots[g].owner = previousOwner
                    } else if t.differs(gsi) {
                        t.list(gsi)
                    }
                    throw error
                }
            }
            return (previous, t.isLive(gsi), others)
        }
    }

    /// What a change to a GSI's entry did: the entry before it, whether the new
    /// one is live in the kernel, and the other routes a push made for it carried.
    typealias EntryChange = (previous: MsiMessage?, live: Bool, others: [WeakRouteReference])

    /// Entries waiting for a commit (changes not yet in the kernel, outside any batch).
    public var waitingEntryCount: Int {
        table.withLock { t in
            var count = 0
            for gsi in t.changed where t.slots[Int(gsi)].owner == 0 && t.differs(gsi) { count += 1 }
            return count
        }
    }

    /// GSIs listed as changed and not yet pushed: never more than the GSIs
    /// there are, however the guest writes while pushes fail.
    package var changedListCount: Int { table.withLock { $0.changed.count } }

    /// `gsi`'s desired entry, and whether the kernel holds it for its current route.
    func entryInfo(_ gsi: UInt32) -> (desired: MsiMessage?, live: Bool) {
        table.withLock { t in (t.slots[Int(gsi)].desired, t.isLive(gsi)) }
    }

    /// The route on `gsi` was disarmed: the push carrying its change must reconcile it.
    func unsteady(_ gsi: UInt32) {
        table.withLock { t in t.slots[Int(gsi)].steady = false }
    }

    /// The entry the table wants for `gsi` (nil: no MSI).
    public func entry(for gsi: UInt32) -> MsiMessage? { table.withLock { $0.slots[Int(gsi)].desired } }

    /// Removes `gsi`'s entry (pushing unless the caller has a batch open; a
    /// failed push is left to the next one) and frees the GSI. Used when a
    /// route is released; its own lock is not held.
    func release(_ gsi: UInt32) {
        let batch = currentBatch
        var schedule = false
        var failure: IrqFdError?
        let others = table.withLock { (t: inout TableState) -> [WeakRouteReference] in
            let g = Int(gsi)
            t.routes[g] = WeakRouteReference()
            t.slots[g].steady = false
            t.retries[gsi] = nil
            var others: [WeakRouteReference] = []
            if t.slots[g].desired != nil || t.slots[g].owner != 0 {
                if let index = t.batchIndex(batch) {
                    t.setDesired(gsi, nil, batch: index)
                } else if let coalescing {
                    // A coalescing partition's drops join the next commit too.
                    t.setDesired(gsi, nil, batch: nil)
                    (others, failure) = pushIfDue(&t, coalescing, except: gsi)
                    if !t.changed.isEmpty, !t.commitScheduled {
                        t.commitScheduled = true
                        schedule = true
                    }
                } else {
                    t.setDesired(gsi, nil, batch: nil)
                    if let carried = try? push(&t, batch: 0, owned: []) { others = t.routes(at: carried, except: gsi) }
                }
            }
            // The next route on this GSI starts from nothing, whatever batch holds it.
            t.slots[g].beforeBatch = nil
            // Whatever the kernel still holds for this GSI was this route's, not the next one's.
            if t.slots[g].pushed != nil { t.slots[g].stale = true }
            t.allocator.release(gsi)
            return others
        }
        if let failure { report(failure) }
        if schedule, let coalescing { scheduleCommit(after: coalescing.delay) }
        reconcileCarried(others)
    }

    /// Every route of this partition whose state breaks the invariant its
    /// operations keep (`RoutedIrqFdRoute.invariantViolation`), described;
    /// empty when all hold. Call it with no batch open. A test seam.
    package func invariantViolations() -> [String] {
        let references = table.withLock { t in t.routes.filter { $0.route != nil } }
        return references.compactMap { reference -> String? in
            guard let object = reference.route else { return nil }
            return unsafeDowncast(object, to: RoutedIrqFdRoute<Kernel>.self).invariantViolation
        }
    }

    /// Routing-table pushes made so far.
    package var pushCount: Int { pushCounter.load(ordering: .relaxed) }
    /// GSIs that can still be handed out.
    public var freeGsiCount: Int { table.withLock { $0.allocator.free } }
    /// How many routes can be live at once.
    public var gsiCapacity: Int { table.withLock { $0.allocator.capacity } }
    /// The entries the kernel holds now, by GSI (a test seam, not API).
    package var pushedEntries: [RoutingEntry] {
        table.withLock { t in
            t.slots.enumerated().compactMap { gsi, slot in slot.pushed.map { RoutingEntry(gsi: UInt32(gsi), msi: $0) } }
        }
    }
}
