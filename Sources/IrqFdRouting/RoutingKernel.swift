public import IrqFdCore

/// One MSI routing entry: a GSI and the message it injects.
public struct RoutingEntry: Hashable, Sendable {
    /// The GSI the kernel looks up when the route's event fires.
    public var gsi: UInt32
    /// The message injected for that GSI.
    public var msi: MsiMessage
    /// Makes an entry.
    public init(gsi: UInt32, msi: MsiMessage) {
        self.gsi = gsi
        self.msi = msi
    }
}

/// What a hypervisor must offer the shared routing core: a GSI space, a
/// routing table replaced whole by one call, and arming/disarming an event
/// on a GSI. KVM and mshv differ only in how they encode these calls.
public protocol RoutingKernel: Sendable {
    /// GSIs are numbered below this limit (from the kernel, e.g. `KVM_CAP_IRQ_ROUTING`).
    var gsiLimit: UInt32 { get }
    /// GSIs the platform keeps for itself (the in-kernel IOAPIC's 0..<24); never handed out.
    var reservedGsis: Range<UInt32> { get }
    /// How many MSI entries the table can hold next to the platform's own entries.
    var msiEntryCapacity: Int { get }

    /// Replaces the whole routing table with `entries` (sorted by GSI), in one call.
    func pushRoutingTable(_ entries: [RoutingEntry]) throws(IrqFdError)
    /// Replaces the routing table, in one call, with the table of the last
    /// successful push (of either kind) changed by `changes` (each GSI at most
    /// once; in no particular order). `table` gives the whole resulting table,
    /// sorted by GSI, for a kernel that only encodes whole tables; building it
    /// costs O(GSIs), which a kernel that keeps its encoded table avoids (KVM's
    /// `IncrementalGSIRoutingTable`). If the call fails, the kernel's table and whatever
    /// the kernel adapter keeps must be as they were before it.
    func pushRoutingChanges(_ changes: [RoutingChange], table: () -> [RoutingEntry]) throws(IrqFdError)
    /// Arms `event` on `gsi`: signals now inject the GSI's MSI.
    func assign(event: any Event, gsi: UInt32) throws(IrqFdError)
    /// Disarms `event` from `gsi`: signals now latch in the event.
    func deassign(event: any Event, gsi: UInt32) throws(IrqFdError)
    /// Makes a fresh non-blocking, close-on-exec event for a new route.
    func makeEvent() throws(IrqFdError) -> any Event
    /// Whether this hypervisor delivers `message` as the guest means it; `setMsi`
    /// refuses any other message with `undeliverableAddress` (rule 7).
    func canDeliver(_ message: MsiMessage) -> Bool
}

extension RoutingKernel {
    /// By default, every x86 MSI address (0xFEExxxxx) is deliverable.
    public func canDeliver(_ message: MsiMessage) -> Bool { message.isDeliverable }

    /// By default, the whole table through `pushRoutingTable` (mshv, test kernels).
    public func pushRoutingChanges(_ changes: [RoutingChange], table: () -> [RoutingEntry]) throws(IrqFdError) {
        try pushRoutingTable(table())
    }
}

/// One change a push makes to the kernel's routing table (see
/// `RoutingKernel.pushRoutingChanges`).
public enum RoutingChange: Hashable, Sendable {
    /// `entry.gsi` now injects `entry.msi` (a new entry, or a new message for an existing one).
    case set(RoutingEntry)
    /// `gsi` no longer has an entry.
    case remove(gsi: UInt32)

    /// The GSI the change is about.
    public var gsi: UInt32 {
        switch self {
        case .set(let entry): entry.gsi
        case .remove(let gsi): gsi
        }
    }
}

/// Delivers a route's signals in userspace while its routing entry is not in
/// the kernel yet (coalesced commits, rule 8 of IrqFdCore's `TheTwelveRules` article). IrqFdRouting has no
/// platform code: a backend fills this with its relay (on KVM, an epoll
/// thread injecting with KVM_SIGNAL_MSI).
public protocol InterimDelivery: Sendable {
    /// A userspace route over `event` (the routing core's own event, shared):
    /// `setMsi` starts serving it (watch the event, inject the message for
    /// each signal), `clearMsi` stops; once `clearMsi` returns, no injection
    /// is in flight and later signals latch in the event.
    func serve(_ event: any Event) throws(IrqFdError) -> any IrqFdRoute
}

/// Runs a coalesced commit later. IrqFdRouting has no platform code: a
/// backend supplies a timer that does not depend on a shared thread pool
/// (the relay's is a thread of its own), so a commit is never starved by
/// callers that block.
public protocol CommitTimer: Sendable {
    /// Runs `work` once, `delay` from now, on some thread that holds no lock of the caller's.
    func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void)
    /// Runs `work` once, as soon as it can, on some thread that holds no lock
    /// of the caller's (by default `after(.zero, work)`). The partition hands
    /// it the arming that follows a push made at once in a caller's thread,
    /// so that a guest's MMIO write that crossed the threshold does not also
    /// pay a KVM_IRQFD per carried route. A partition also reports commit
    /// errors here, so that no report runs under a caller's lock.
    func soon(_ work: @escaping @Sendable () -> Void)
}

extension CommitTimer {
    /// `after(.zero, work)`.
    public func soon(_ work: @escaping @Sendable () -> Void) { after(.zero, work) }
}

/// A portable timer on Swift concurrency's global executor. Fine where that
/// pool is not saturated by blocking work; backends prefer a thread of their own.
public struct TaskCommitTimer: CommitTimer {
    /// The timer.
    public init() {}
    /// `Task.sleep(for:)` on a detached task, then `work`.
    public func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) {
        Task.detached {
            try? await Task.sleep(for: delay)
            work()
        }
    }
}
