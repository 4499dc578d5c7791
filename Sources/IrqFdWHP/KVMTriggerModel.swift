#if os(Linux)
public import IrqFdCore
public import IrqFdKVM
import IrqFdLinux
import IrqFdRelay
public import KVM
import Synchronization

/// WHP's trigger API as documented, built on KVM so the WHP strategy's
/// interrupts really reach a guest on this machine.
///
/// A trigger is a KVM route of the VM's irqfd partition: a private GSI, an
/// eventfd and an irqfd. Create = new route + `setMsi` (entry pushed, irqfd
/// armed: live at once, like `WHvCreateTrigger`); update = `setMsi` on the
/// live route (one table push; the eventfd stays the same, like
/// `WHvUpdateTriggerParameters`); delete = `clearMsi` (irqfd disarmed, entry
/// removed: signals no longer reach the guest and stay in the eventfd, which
/// stays open for its owner, like `WHvDeleteTrigger`). Signals that arrive
/// before KVM injects coalesce, as WHP says its signals may. Request =
/// `KVM_SIGNAL_MSI`. Each `WHPInterruptControl` goes back to an MSI with
/// `msiMessage`, so every delivery also checks the MSI → WHP decoding.
///
/// It shares the partition (and so the VM's one routing table) with any other
/// user of `partition`; KVM replaces the table whole, so two partitions on one
/// VM would erase each other's routes.
public final class KVMTriggerModel: TriggerProvider {
    /// A trigger: the KVM route behind it. Deleting the trigger leaves the route
    /// without an MSI; releasing it frees the GSI.
    public typealias Trigger = KVMIrqFdRoute

    /// The KVM partition triggers are made on.
    public let partition: KVMIrqFd
    private let injector: KVMSignalMsiInjector
    private let counts = Mutex(Statistics())

    /// A model over `partition`, requesting interrupts on `vm`.
    public init(partition: KVMIrqFd, vm: VirtualMachine) {
        self.partition = partition
        injector = KVMSignalMsiInjector(vm: vm)
    }

    /// Calls made so far, by kind.
    public struct Statistics: Equatable, Sendable {
        /// `WHvCreateTrigger`.
        public var created = 0
        /// `WHvUpdateTriggerParameters`.
        public var updated = 0
        /// `WHvDeleteTrigger`.
        public var deleted = 0
        /// `WHvRequestInterrupt`.
        public var requested = 0

        /// Counts, for comparing.
        public init(created: Int = 0, updated: Int = 0, deleted: Int = 0, requested: Int = 0) {
            self.created = created
            self.updated = updated
            self.deleted = deleted
            self.requested = requested
        }
    }

    /// What the strategy has asked of the model.
    public var statistics: Statistics { counts.withLock { $0 } }

    /// A live trigger: new KVM route, entry pushed, irqfd armed.
    public func createTrigger(_ interrupt: WHPInterruptControl) throws(IrqFdError) -> (
        trigger: Trigger, event: any Event
    ) {
        let route = try partition.newRoute()
        try route.setMsi(interrupt.msiMessage)
        counts.withLock { $0.created += 1 }
        return (route, route.event)
    }

    /// Retargets the live route; the eventfd is untouched.
    public func updateTrigger(_ trigger: Trigger, to interrupt: WHPInterruptControl) throws(IrqFdError) {
        try trigger.setMsi(interrupt.msiMessage)
        counts.withLock { $0.updated += 1 }
    }

    /// Disarms and removes the entry; the eventfd stays open for its owners.
    public func deleteTrigger(_ trigger: Trigger) throws(IrqFdError) {
        try trigger.clearMsi()
        counts.withLock { $0.deleted += 1 }
    }

    /// KVM_SIGNAL_MSI. Counted before the call: once the guest has taken the
    /// interrupt, the count must already say so (counting after it let a
    /// test see the interrupt and a count of 0, under ThreadSanitizer).
    public func requestInterrupt(_ interrupt: WHPInterruptControl) throws(IrqFdError) {
        counts.withLock { $0.requested += 1 }
        try injector.inject(interrupt.msiMessage)
    }
}

extension WHPIrqFd where Provider == KVMTriggerModel {
    /// The WHP strategy on the KVM model of `vm`, whose irqfd partition is
    /// `partition`, relayed by an epoll thread.
    public convenience init(modelOn partition: KVMIrqFd, vm: VirtualMachine) throws(IrqFdError) {
        try self.init(provider: KVMTriggerModel(partition: partition, vm: vm), poller: try EpollPoller())
    }
}
#endif
