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
}
