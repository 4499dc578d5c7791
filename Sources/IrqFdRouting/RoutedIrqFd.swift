public import IrqFdCore
import Synchronization

/// The table's state, behind the partition's lock.
///
/// Deliberately not nested in the generic `RoutedIrqFd<Kernel>`: a nested type
/// is generic too, and every access from the unspecialised generic code then
/// looks its metadata up at run time (a tenth of a batch's CPU). Routes are
/// held as `AnyObject` for the same reason; only routes of the owning
/// partition are ever stored.
///
/// Batches belong to their caller (issue 13, item 1): each open batch has an
/// id, and each GSI whose unpushed change was made inside a batch is owned by
/// that batch (`owner`). A push made by one caller carries its own changes
/// and every unowned change, and the kernel's entry (`pushed`) for GSIs that
/// another open batch owns; a failed push rolls back only what its caller owns.
struct RoutingTableState {
    var allocator: GsiAllocator
    /// Each GSI's entries and flags, by GSI (see `GsiSlot`): one array, so a
    /// change to a GSI makes one uniqueness check and touches one cache line
    /// (five arrays cost five of each, a third of a retarget's table work).
    var slots: [GsiSlot]
    /// Each GSI's route, weakly: the routes a push or a rollback must arm or
    /// disarm. Upgraded to strong references only outside the lock, so no
    /// route's deinit ever runs under it (issue 13, item 3). Kept apart from
    /// `slots`: a weak reference would make every slot non-trivial (each copy
    /// and move a side-table retain), and the steady retarget never reads it.
    var routes: [WeakRouteReference]
    /// GSIs changed outside any open batch and not yet in the kernel (may
    /// repeat, though never twice in a row).
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
    /// The last coalesced commit that failed, until one succeeds.
    var commitError: IrqFdError?

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
            // writes (3-4x as many pushes otherwise). It is still listed, so the
            // setEntry rollback's removeLast + re-append stays right.
            if changed.last != gsi { changed.append(gsi) }
        }
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
    /// back to (issue 13, item 2).
    var stale = false
    /// Whether the GSI's route needs nothing after the push that carries its
    /// batch's change: set by `setMsi` inside a batch on a route that is armed,
    /// not served, and keeps an entry (a retarget), so the push only swaps the
    /// message under an irqfd that stays armed. Any later change to the route
    /// clears it (`setEntry`, `setEntryDeferred`, `mask`, `release`); the
    /// batch's end then skips its reconcile (issue 11: the retarget of 2048
    /// live routes costs one push and little else).
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
        desired = message
        self.steady = steady && !stale
        guard owner != id else { return false }
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

/// The batches open on this thread (or task), one per partition.
///
/// A task-local: bound by `withBatch` around its body, so membership follows
/// the caller and never another thread. Outside any task Swift keeps it in
/// thread-local storage, which is what device threads use.
///
/// The first `Stack.inlineCapacity` keys live inline in a trivial value, so
/// reading them (once per `setMsi` in a batch) copies a few words and makes
/// no retain or release; keys beyond those (batches open on more partitions
/// at once) go to `overflow`, an array read only when the stack is that deep.
enum OpenBatches {
    /// A partition and the id of the batch this caller holds open on it.
    struct Key: Sendable {
        var partition: ObjectIdentifier
        var id: UInt32
    }

    /// The innermost keys, inline (trivial: copying it is a few words, no ARC).
    struct Stack: Sendable {
        static let inlineCapacity = 4
        /// Keys in all, inline and in `overflow`.
        var count = 0
        var k0: Key?, k1: Key?, k2: Key?, k3: Key?

        /// Inline key `i` (0..<inlineCapacity).
        subscript(i: Int) -> Key? {
            get {
                switch i {
                case 0: k0
                case 1: k1
                case 2: k2
                default: k3
                }
            }
            set {
                switch i {
                case 0: k0 = newValue
                case 1: k1 = newValue
                case 2: k2 = newValue
                default: k3 = newValue
                }
            }
        }
    }
    @TaskLocal static var stack = Stack()
    /// Keys past the inline ones, outermost first.
    @TaskLocal static var overflow: [Key] = []

    /// The caller's open batch on `partition` (0: none).
    static func current(_ partition: ObjectIdentifier) -> UInt32 {
        let stack = Self.stack
        if stack.count == 0 { return 0 }
        if stack.count > Stack.inlineCapacity, let key = Self.overflow.last(where: { $0.partition == partition }) {
            return key.id
        }
        var i = min(stack.count, Stack.inlineCapacity) - 1
        while i >= 0 {
            if let key = stack[i], key.partition == partition { return key.id }
            i -= 1
        }
        return 0
    }

    /// Runs `body` with `key` pushed on the caller's open batches.
    static func with(_ key: Key, _ body: () -> Void) {
        var stack = Self.stack
        if stack.count < Stack.inlineCapacity {
            stack[stack.count] = key
            stack.count += 1
            Self.$stack.withValue(stack, operation: body)
        } else {
            stack.count += 1
            Self.$stack.withValue(stack) {
                Self.$overflow.withValue(Self.overflow + [key], operation: body)
            }
        }
    }
}

/// The routing core shared by every backend whose kernel keeps a GSI routing
/// table (KVM, mshv): GSI allocation, the table with batches, and routes that
/// obey DESIGN.md's twelve rules. The kernel's encoding is `Kernel`'s business.
///
/// Locking (rule 11): each route has its own lock, taken before the table lock
/// and never after it. The table lock is held across a push, so the kernel's
/// table always matches `pushed`. Routes that a push (or a rollback) leaves
/// to be armed are armed after both locks are released, each under its own
/// lock: never one route's lock inside another's.
public final class RoutedIrqFd<Kernel: RoutingKernel>: IrqFd {
    /// The kernel interface this partition programs.
    public let kernel: Kernel
    let table: Mutex<TableState>
    private let pushCounter = Atomic<Int>(0)

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

    /// Deferred (coalesced) commits, DESIGN.md rule 8.
    ///
    /// A route programmed with `setMsiDeferred`, or dropped, records its entry
    /// without pushing. While that entry is not in the kernel, the route's
    /// event is served by `interim` (a userspace relay: it watches the event
    /// and injects the message, e.g. with KVM_SIGNAL_MSI), so the guest gets
    /// every interrupt at once and none while masked. One push then carries
    /// every waiting entry, after which each served route stops being served
    /// and is armed, in GSI order (rule 9): on the committer's thread, or,
    /// after a push made at once in a caller, on `timer.soon` (see
    /// `reconcileCarried`). The bound: a waiting entry is
    /// pushed at most `delay` (plus the scheduler's latency) after the first
    /// change that made it wait, or at once when `threshold` entries wait, or
    /// as many as the kernel holds if that is more (so the kernel's total
    /// work to bring N entries live one at a time is O(N), see
    /// `RoutingTableState.commitsAtOnce`). A
    /// failed commit changes nothing in the kernel; its routes stay served,
    /// the error goes to `onCommitError` and the commit is retried after `delay`;
    /// so is an arm that fails after a commit landed (its route stays served).
    public struct Coalescing: Sendable {
        /// Serves routes whose entries are not in the kernel yet.
        public var interim: any InterimDelivery
        /// Runs the committer after `delay`, and (`soon`) the arming of the
        /// routes a push made at once in a caller carried.
        public var timer: any CommitTimer
        /// The longest a waiting entry waits for its push.
        public var delay: Duration
        /// Waiting entries that make the push happen at once, in the caller (at
        /// least; once the kernel holds more entries than this, as many as it holds).
        public var threshold: Int
        /// Told about every coalesced commit that failed (no caller waits for it).
        public var onCommitError: @Sendable (IrqFdError) -> Void

        /// Coalescing over `interim`; by default a 2 ms bound and 512 entries.
        public init(
            interim: any InterimDelivery, timer: any CommitTimer = TaskCommitTimer(), delay: Duration = .milliseconds(2),
            threshold: Int = 512, onCommitError: @escaping @Sendable (IrqFdError) -> Void = { _ in }
        ) {
            self.interim = interim
            self.timer = timer
            self.delay = delay
            self.threshold = threshold
            self.onCommitError = onCommitError
        }
    }

    /// A partition over `kernel`'s GSI space and table; with `coalescing`,
    /// deferred changes and drops are committed together (see `Coalescing`).
    public init(kernel: Kernel, coalescing: Coalescing? = nil) {
        self.kernel = kernel
        self.coalescing = coalescing
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
        let route = RoutedIrqFdRoute(gsi: gsi, event: event, partition: self)
        table.withLock { $0.routes[Int(gsi)] = WeakRouteReference(route: route) }
        return route
    }

    /// See `IrqFd.newIrqFdRoute()`.
    public func newIrqFdRoute() throws(IrqFdError) -> any IrqFdRoute { try newRoute() }

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
    /// the push fails; then brings every route it touched in line with the
    /// kernel. Returns the first error.
    private func endBatch(_ id: UInt32) -> IrqFdError? {
        let (touched, error) = table.withLock { (t: inout TableState) -> ([WeakRouteReference], IrqFdError?) in
            guard let index = t.batchIndex(id) else { return ([], nil) }
            var mine = t.batches.remove(at: index).touched
            mine.removeAll { t.slots[Int($0)].owner != id }
            defer {
                // Its buffer serves the next batch.
                mine.removeAll(keepingCapacity: true)
                if mine.capacity > t.touchedScratch.capacity { t.touchedScratch = mine }
            }
            guard !mine.isEmpty || !t.changed.isEmpty else { return ([], nil) }
            do throws(IrqFdError) {
                let carried = try push(&t, batch: id, owned: mine)
                return (t.unsteadyRoutes(at: carried), nil)
            } catch {
                // Back to what the kernel holds for each GSI's current route.
                for gsi in mine {
                    let g = Int(gsi)
                    t.slots[g].steady = false
                    t.slots[g].desired = t.slots[g].baseline
                    t.slots[g].owner = 0
                    if t.slots[g].desired != t.slots[g].pushed { t.changed.append(gsi) }
                }
                mine.sort()
                return (t.routes(at: mine), error)
            }
        }
        var firstError = error
        if let armError = reconcile(touched) { firstError = firstError ?? armError }
        return firstError
    }

    /// The routes a push made at once in a caller's thread carried (the
    /// threshold was crossed, see `Coalescing`): on a coalescing partition
    /// they are armed on the timer's thread, so the caller (a guest's MMIO
    /// write) pays the push but not a KVM_IRQFD and an interim stop per
    /// route. Until that runs, each stays served: its signals are delivered
    /// by the interim, none are lost, and a route masked meanwhile is left
    /// unarmed by its reconcile. Called with no lock held.
    func reconcileCarried(_ routes: [WeakRouteReference]) {
        guard !routes.isEmpty else { return }
        if let coalescing {
            coalescing.timer.soon { [self] in reconcileUnwaited(routes) }
        } else {
            reconcileUnwaited(routes)
        }
    }

    /// Brings in line routes that no caller waits for: the other routes a
    /// push carried (a coalesced commit, or a caller's push that carried
    /// waiting entries). Called with no lock held.
    ///
    /// On a coalescing partition an arm that fails is handled like a failed
    /// commit: the route stays served (its reconcile serves it again), the
    /// error goes to `onCommitError`, and its reconcile is retried after
    /// `delay` until it arms, is masked or goes. Without this, such a route
    /// would be served by the relay for good and nobody would hear why.
    /// Rule 12: once the partition is gone, nothing is retried or reported.
    func reconcileUnwaited(_ routes: [WeakRouteReference]) {
        var failed: [WeakRouteReference] = []
        var firstError: IrqFdError?
        for reference in routes {
            guard let object = reference.route else { continue }
            let route = unsafeDowncast(object, to: RoutedIrqFdRoute<Kernel>.self)
            do throws(IrqFdError) { try route.reconcile() } catch {
                if case .partitionGone = error { return }
                failed.append(reference)
                firstError = firstError ?? error
            }
        }
        guard let firstError, let coalescing else { return }
        coalescing.onCommitError(firstError)
        coalescing.timer.after(coalescing.delay) { [weak self, failed] in self?.reconcileUnwaited(failed) }
    }

    /// Brings each route in line with the table (arms what should be armed);
    /// called with no lock held. Returns the first error.
    func reconcile(_ routes: [WeakRouteReference]) -> IrqFdError? {
        var firstError: IrqFdError?
        for reference in routes {
            guard let object = reference.route else { continue }
            // Only this partition's routes are ever registered, so the downcast cannot fail.
            let route = unsafeDowncast(object, to: RoutedIrqFdRoute<Kernel>.self)
            do throws(IrqFdError) { try route.reconcile() } catch { firstError = firstError ?? error }
        }
        return firstError
    }

    /// Pushes the table in one kernel call (rule 8): every GSI's desired
    /// entry, except that a GSI owned by another open batch keeps what the
    /// kernel holds. `owned` lists the GSIs `batch` owns. Table lock held.
    /// Returns the GSIs whose entries changed in the kernel, in GSI order.
    ///
    /// O(changed GSIs) of Swift work (issue 11, item 3): only the GSIs in
    /// `changed` and `owned` can differ from what the kernel holds (every
    /// other GSI's desired entry equals `pushed`, or belongs to another open
    /// batch), so the push hands the kernel just their differences. A kernel
    /// that keeps its encoded table (KVM) applies them in place; others get
    /// the whole table, built here only when they ask for it.
    private func push(_ t: inout TableState, batch: UInt32, owned: [UInt32]) throws(IrqFdError) -> [UInt32] {
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
        t.changed.removeAll(keepingCapacity: true)
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
    /// `armed`: the caller's route is armed and not served (see `steady`).
    func setEntry(
        _ gsi: UInt32, to message: MsiMessage?, batch: UInt32, armed: Bool = false
    ) throws(IrqFdError) -> (previous: MsiMessage?, live: Bool, others: [WeakRouteReference]) {
        try table.withLock { (t: inout TableState) throws(IrqFdError) -> (previous: MsiMessage?, live: Bool, others: [WeakRouteReference]) in
            let g = Int(gsi)
            let previous = t.slots[g].desired
            var others: [WeakRouteReference] = []
            if previous != message {
                if let index = t.batchIndex(batch) {
                    t.setDesired(gsi, message, batch: index, steady: armed && previous != nil && message != nil)
                } else {
                    let previousOwner = t.slots[g].owner
                    t.setDesired(gsi, message, batch: nil)
                    do throws(IrqFdError) {
                        let carried = try push(&t, batch: 0, owned: [])
                        others = t.routes(at: carried, except: gsi)
                    } catch {
                        t.changed.removeLast()
                        t.slots[g].desired = previous
                        if t.batchIndex(previousOwner) != nil {
                            t.slots[g].owner = previousOwner
                        } else if previous != t.slots[g].pushed {
                            t.changed.append(gsi)
                        }
                        throw error
                    }
                }
            }
            return (previous, t.isLive(gsi), others)
        }
    }

    /// Records `message` for `gsi` without pushing: it joins the next coalesced
    /// commit (made at once, here, when `threshold` entries wait). Returns the
    /// previous entry, whether the new one is live, and the other routes a
    /// push made here carried.
    func setEntryDeferred(
        _ gsi: UInt32, to message: MsiMessage?, coalescing: Coalescing
    ) -> (previous: MsiMessage?, live: Bool, others: [WeakRouteReference]) {
        var schedule = false
        let result = table.withLock { (t: inout TableState) -> (previous: MsiMessage?, live: Bool, others: [WeakRouteReference]) in
            let previous = t.slots[Int(gsi)].desired
            var others: [WeakRouteReference] = []
            t.slots[Int(gsi)].steady = false
            if previous != message {
                t.setDesired(gsi, message, batch: nil)
                if t.commitsAtOnce(coalescing) {
                    if let carried = try? push(&t, batch: 0, owned: []) {
                        others = t.routes(at: carried, except: gsi)
                    }
                }
                if !t.changed.isEmpty, !t.commitScheduled {
                    t.commitScheduled = true
                    schedule = true
                }
            }
            return (previous, t.isLive(gsi), others)
        }
        if schedule { scheduleCommit(after: coalescing.delay) }
        return result
    }

    /// Runs `commitNow` after `delay`, on the coalescing timer.
    private func scheduleCommit(after delay: Duration) {
        coalescing?.timer.after(delay) { [weak self] in self?.commitNow() }
    }

    /// Pushes every waiting (unowned) change now, then arms the routes it
    /// carried. A failure is reported to `onCommitError` and retried later;
    /// the routes stay served meanwhile. Returns the push's error, if any.
    @discardableResult
    public func commitNow() -> IrqFdError? {
        let (carried, error) = table.withLock { (t: inout TableState) -> ([WeakRouteReference], IrqFdError?) in
            t.commitScheduled = false
            guard !t.changed.isEmpty else { return ([], nil) }
            do throws(IrqFdError) {
                let carried = try push(&t, batch: 0, owned: [])
                t.commitError = nil
                return (t.routes(at: carried), nil)
            } catch {
                t.commitError = error
                // Rule 12: once the partition is gone there is nothing to commit to and
                // no one to tell (the bench saw a warning logged after every VM's stop).
                if case .partitionGone = error { return ([], nil) }
                if coalescing != nil { t.commitScheduled = true }
                return ([], error)
            }
        }
        if let error, let coalescing {
            coalescing.onCommitError(error)
            scheduleCommit(after: coalescing.delay)
        }
        reconcileUnwaited(carried)
        return error
    }

    /// The last coalesced commit's error, until a commit succeeds.
    public var lastCommitError: IrqFdError? { table.withLock { $0.commitError } }

    /// Entries waiting for a commit (changes not yet in the kernel, outside any batch).
    public var waitingEntryCount: Int {
        table.withLock { t in Set(t.changed.filter { t.slots[Int($0)].owner == 0 && t.slots[Int($0)].desired != t.slots[Int($0)].pushed }).count }
    }

    /// Whether `gsi` has an entry, and whether that entry is in the kernel.
    func entryState(_ gsi: UInt32) -> (exists: Bool, live: Bool) {
        table.withLock { t in (t.slots[Int(gsi)].desired != nil, t.isLive(gsi)) }
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
        let others = table.withLock { (t: inout TableState) -> [WeakRouteReference] in
            let g = Int(gsi)
            t.routes[g] = WeakRouteReference()
            t.slots[g].steady = false
            var others: [WeakRouteReference] = []
            if t.slots[g].desired != nil || t.slots[g].owner != 0 {
                if let index = t.batchIndex(batch) {
                    t.setDesired(gsi, nil, batch: index)
                } else if let coalescing {
                    // A coalescing partition's drops join the next commit too.
                    t.setDesired(gsi, nil, batch: nil)
                    if t.commitsAtOnce(coalescing) {
                        if let carried = try? push(&t, batch: 0, owned: []) { others = t.routes(at: carried, except: gsi) }
                    }
                    if !t.changed.isEmpty, !t.commitScheduled {
                        t.commitScheduled = true
                        schedule = true
                    }
                } else {
                    t.setDesired(gsi, nil, batch: nil)
                    if let carried = try? push(&t, batch: 0, owned: []) { others = t.routes(at: carried, except: gsi) }
                }
            }
            // Whatever the kernel still holds for this GSI was this route's, not the next one's.
            if t.slots[g].pushed != nil { t.slots[g].stale = true }
            t.allocator.release(gsi)
            return others
        }
        if schedule, let coalescing { scheduleCommit(after: coalescing.delay) }
        reconcileCarried(others)
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
            t.slots.enumerated().compactMap { gsi, slot in slot.pushed.map { RoutingEntry(gsi: UInt32(gsi), msi: $0) } }
        }
    }
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

/// A route's own state, behind its lock.
struct RoutedRouteState {
    var masked = false
    var armed = false
    /// The interim (userspace) route over this route's event, made on first need.
    var interim: (any IrqFdRoute)?
    /// Whether `interim` is delivering this route's signals now.
    var serving = false
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
    public func setMsi(address: UInt64, data: UInt32) throws(IrqFdError) {
        let message = MsiMessage(address: address, data: data)
        guard partition.canDeliver(message) else {
            try clearMsi()
            throw .undeliverableAddress(address)
        }
        let batch = partition.currentBatch
        let others = try state.withLock { (s: inout RouteState) throws(IrqFdError) -> [WeakRouteReference] in
            let wantsArm = !s.masked && !s.armed
            let (previous, live, others): (MsiMessage?, Bool, [WeakRouteReference])
            do throws(IrqFdError) {
                (previous, live, others) = try partition.setEntry(gsi, to: message, batch: batch, armed: s.armed && !s.serving)
            } catch {
                throw error  // the entry is as it was, and so is any serving
            }
            if s.serving {
                if live || batch == 0 {
                    // Hand over (rule 9: the push is done): stop the relay, then arm below.
                    try stopServing(&s)
                } else {
                    try serve(&s, message)  // in a batch: keep serving, with the new message
                }
            }
            guard wantsArm, live else { return others }
            do throws(IrqFdError) {
                try partition.kernel.assign(event: event, gsi: gsi)
                s.armed = true
            } catch {
                // Rule 10: the table goes back to what it was before this call.
                if previous != message { _ = try? partition.setEntry(gsi, to: previous, batch: batch) }
                throw error
            }
            return others
        }
        if !others.isEmpty { partition.reconcileUnwaited(others) }
    }

    /// Rule 6: disarm first, then remove the entry.
    public func clearMsi() throws(IrqFdError) {
        let batch = partition.currentBatch
        let others = try state.withLock { (s: inout RouteState) throws(IrqFdError) -> [WeakRouteReference] in
            guard partition.entryState(gsi).exists else { return [] }
            if s.serving { try stopServing(&s) }
            let wasArmed = s.armed
            if wasArmed {
                try partition.kernel.deassign(event: event, gsi: gsi)
                s.armed = false
            }
            do throws(IrqFdError) {
                return try partition.setEntry(gsi, to: nil, batch: batch).others
            } catch {
                if wasArmed, (try? partition.kernel.assign(event: event, gsi: gsi)) != nil { s.armed = true }
                throw error
            }
        }
        partition.reconcileUnwaited(others)
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
                let (exists, live) = partition.entryState(gsi)
                if live {
                    try partition.kernel.assign(event: event, gsi: gsi)
                    s.armed = true
                } else if exists, partition.coalescing != nil, let message = partition.entry(for: gsi) {
                    // The entry waits for a coalesced commit: serve it until the push lands.
                    try serve(&s, message)
                }
            }
            s.masked = false
        }
    }

    /// Brings the route in line with the table: called after a push or a
    /// rollback that involved its GSI. Armed only with an entry the kernel
    /// holds; armed whenever it is unmasked and has one.
    func reconcile() throws(IrqFdError) {
        try state.withLock { (s: inout RouteState) throws(IrqFdError) in
            let (exists, live) = partition.entryState(gsi)
            if s.serving, live || !exists || s.masked {
                // Rule 9: the push has landed; stop the relay first, then arm. A signal
                // between the two latches in the event and the arm injects it.
                try stopServing(&s)
            }
            if s.armed, !exists {
                try partition.kernel.deassign(event: event, gsi: gsi)
                s.armed = false
            }
            if !s.masked, !s.armed, live {
                do throws(IrqFdError) {
                    try partition.kernel.assign(event: event, gsi: gsi)
                    s.armed = true
                } catch {
                    // Not armed, and the interim was stopped above: serve again
                    // (a coalescing partition), or the route's signals would only
                    // latch until the next reconcile.
                    if let message = partition.entry(for: gsi) { try? serve(&s, message) }
                    throw error
                }
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
        let others = try state.withLock { (s: inout RouteState) throws(IrqFdError) -> [WeakRouteReference] in
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
                    if !s.masked, !s.serving || previous != message { try serve(&s, message) }
                }
            } catch {
                // Rule 10: back to the previous entry (still waiting, or still in the kernel).
                _ = partition.setEntryDeferred(gsi, to: previous, coalescing: coalescing)
                throw error
            }
            return others
        }
        partition.reconcileCarried(others)
    }

    /// Starts (or retargets) the interim delivery of this route's signals. Route lock held.
    private func serve(_ s: inout RouteState, _ message: MsiMessage) throws(IrqFdError) {
        guard let coalescing = partition.coalescing else { return }
        let interim: any IrqFdRoute
        if let existing = s.interim {
            interim = existing
        } else {
            interim = try coalescing.interim.serve(event)
            s.interim = interim
        }
        try interim.setMsi(message)
        s.serving = true
    }

    /// Stops the interim delivery; once it returns, no injection is in flight. Route lock held.
    private func stopServing(_ s: inout RouteState) throws(IrqFdError) {
        try s.interim?.clearMsi()
        s.serving = false
    }

    /// Whether the route's signals are being delivered in userspace while its entry waits for a commit.
    public var isServed: Bool { state.withLock { $0.serving } }
}
