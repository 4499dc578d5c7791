#if os(Linux)
public import IrqFdCore
public import IrqFdRouting
import IrqFdLinux
public import KVM
import Synchronization

/// KVM's side of the routing core: KVM_SET_GSI_ROUTING for the table,
/// KVM_IRQFD to arm and disarm, eventfds for events.
///
/// It holds the VM weakly: routes must not keep a VM alive, and once the VM is
/// gone every call throws `partitionGone` without touching a descriptor
/// number that may since belong to something else (rule 12).
public final class KVMRoutingKernel: RoutingKernel {
    private weak let vm: VirtualMachine?
    public let gsiLimit: UInt32
    public let reservedGsis: Range<UInt32>
    public let msiEntryCapacity: Int
    /// Whether pushes carry KVM's default PIC/IOAPIC routes for GSIs 0..<24.
    public let keepsIrqchipRoutes: Bool
    /// The encoded table the kernel holds after the last successful push.
    private let buffer: Mutex<IncrementalGSIRoutingTable>

    /// How the VM's interrupt controllers are set up; decides which GSIs are reserved.
    public enum IrqchipMode: Sendable {
        /// KVM_CREATE_IRQCHIP: the IOAPIC owns GSIs 0..<24 and the table keeps its routes.
        case inKernel
        /// Split irqchip or none: every GSI is free for MSI routes.
        case userspaceIOAPIC
    }

    /// A kernel for `vm`, sizing the GSI space from KVM_CAP_IRQ_ROUTING.
    public init(vm: VirtualMachine, irqchip: IrqchipMode = .inKernel) throws(IrqFdError) {
        guard vm.checkExtension(.irqfd) > 0 else { throw .unsupported("KVM_CAP_IRQFD is missing") }
        let maxRoutes = vm.checkExtension(.irqRouting)
        guard maxRoutes > 0 else { throw .unsupported("KVM_CAP_IRQ_ROUTING is missing") }
        self.vm = vm
        gsiLimit = UInt32(maxRoutes)
        // KVM_MAX_IRQ_ROUTES bounds both GSI numbers and entries in one table,
        // so the irqchip's own entries come out of the MSI routes' share.
        switch irqchip {
        case .inKernel:
            reservedGsis = 0..<24
            keepsIrqchipRoutes = true
            msiEntryCapacity = maxRoutes - GSIRoutingTable.defaultIrqchipRouteCount
        case .userspaceIOAPIC:
            reservedGsis = 0..<0
            keepsIrqchipRoutes = false
            msiEntryCapacity = maxRoutes
        }
        buffer = Mutex(
            IncrementalGSIRoutingTable(capacity: maxRoutes, gsiLimit: maxRoutes, irqchipRoutes: keepsIrqchipRoutes))
    }

    private func liveVM() throws(IrqFdError) -> VirtualMachine {
        guard let vm else { throw .partitionGone }
        return vm
    }

    /// One KVM_SET_GSI_ROUTING carrying the irqchip routes (if kept) and `entries`.
    public func pushRoutingTable(_ entries: [RoutingEntry]) throws(IrqFdError) {
        let vm = try liveVM()
        try buffer.withLock { (table: inout IncrementalGSIRoutingTable) throws(IrqFdError) in
            table.replaceAll(entries.lazy.map { ($0.gsi, $0.msi.address, $0.msi.data) })
            try Self.push(&table, vm)
        }
    }

    /// One KVM_SET_GSI_ROUTING of the kept table with `changes` applied in
    /// place: O(changes) Swift work (the kernel still reads every entry).
    /// `table` is never called. A refused push restores the kept table exactly.
    public func pushRoutingChanges(_ changes: [RoutingChange], table: () -> [RoutingEntry]) throws(IrqFdError) {
        let vm = try liveVM()
        try buffer.withLock { (kept: inout IncrementalGSIRoutingTable) throws(IrqFdError) in
            for change in changes {
                switch change {
                case .set(let entry): kept.setMsi(gsi: entry.gsi, address: entry.msi.address, data: entry.msi.data)
                case .remove(let gsi): kept.removeMsi(gsi: gsi)
                }
            }
            try Self.push(&kept, vm)
        }
    }

    /// KVM_SET_GSI_ROUTING of `table`; commits its changes, or rolls them back if refused.
    private static func push(_ table: inout IncrementalGSIRoutingTable, _ vm: VirtualMachine) throws(IrqFdError) {
        do throws(SystemCallError) {
            try vm.setGSIRouting(table.table)
        } catch {
            table.rollback()
            throw .systemCall(error)
        }
        table.commit()
    }

    /// Entries the pushes so far have written into the kept table (see
    /// `IncrementalGSIRoutingTable.entriesWritten`): a push that changes one
    /// entry adds at most one, whatever the table's size.
    package var entriesEncoded: Int { buffer.withLock { $0.entriesWritten } }

    /// The MSI entries of the table the kernel holds (the last successful push), by GSI.
    package var kernelMsiEntries: [UInt32: MsiMessage] {
        buffer.withLock { table in
            var result: [UInt32: MsiMessage] = [:]
            for entry in table.msiEntries { result[entry.gsi] = MsiMessage(address: entry.address, data: entry.data) }
            return result
        }
    }

    /// The bytes of the table the kernel holds, exactly as last pushed (slot order included).
    package var kernelTableBytes: [UInt8] { buffer.withLock { $0.table.bytes } }

    /// KVM_IRQFD (assign).
    ///
    /// KVM injects a signal already latched in the eventfd when it is assigned,
    /// but without consuming it (kvm_irqfd_assign schedules the injection and
    /// leaves the counter alone; only the wakeup path reads it), so a signal
    /// delivered by an unmask would still read as pending afterwards. So the
    /// latched count is consumed here and signalled again once armed: the
    /// wakeup path then reads the counter and injects once.
    public func assign(event: any Event, gsi: UInt32) throws(IrqFdError) {
        let vm = try liveVM()
        let latched = event.tryWait()
        do throws(SystemCallError) {
            try vm.assignIrqfd(eventFD: event.nativeHandle.fileDescriptor, gsi: gsi)
        } catch {
            if latched { event.signal() }
            throw .systemCall(error)
        }
        if latched { event.signal() }
    }

    /// KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN.
    public func deassign(event: any Event, gsi: UInt32) throws(IrqFdError) {
        let vm = try liveVM()
        do throws(SystemCallError) {
            try vm.deassignIrqfd(eventFD: event.nativeHandle.fileDescriptor, gsi: gsi)
        } catch { throw .systemCall(error) }
    }

    /// A fresh eventfd (EFD_NONBLOCK | EFD_CLOEXEC).
    public func makeEvent() throws(IrqFdError) -> any Event { try EventFD() }
}

/// The KVM irqfd backend: a routing-core partition over a KVM VM.
public typealias KVMIrqFd = RoutedIrqFd<KVMRoutingKernel>
/// A route of the KVM backend.
public typealias KVMIrqFdRoute = RoutedIrqFdRoute<KVMRoutingKernel>

extension RoutedIrqFd where Kernel == KVMRoutingKernel {
    /// The irqfd partition of `vm` (which must already have its irqchip).
    public convenience init(vm: VirtualMachine, irqchip: KVMRoutingKernel.IrqchipMode = .inKernel) throws(IrqFdError) {
        self.init(kernel: try KVMRoutingKernel(vm: vm, irqchip: irqchip))
    }
}
#endif
