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
    private let buffer: Mutex<GSIRoutingTable>

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
        buffer = Mutex(GSIRoutingTable(capacity: maxRoutes))
    }

    private func liveVM() throws(IrqFdError) -> VirtualMachine {
        guard let vm else { throw .partitionGone }
        return vm
    }

    /// One KVM_SET_GSI_ROUTING carrying the irqchip routes (if kept) and `entries`.
    public func pushRoutingTable(_ entries: [RoutingEntry]) throws(IrqFdError) {
        let vm = try liveVM()
        try buffer.withLock { (table: inout GSIRoutingTable) throws(IrqFdError) in
            table.removeAll()
            if keepsIrqchipRoutes { table.appendDefaultIrqchipRoutes() }
            for entry in entries { table.appendMsi(gsi: entry.gsi, address: entry.msi.address, data: entry.msi.data) }
            do throws(SystemCallError) { try vm.setGSIRouting(table) } catch { throw .systemCall(error) }
        }
    }

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
            try vm.assignIrqfd(eventFD: Int32(event.nativeHandle.rawValue), gsi: gsi)
        } catch {
            if latched { event.signal() }
            throw .systemCall(error)
        }
        if latched { event.signal() }
    }

    /// KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN.
    public func deassign(event: any Event, gsi: UInt32) throws(IrqFdError) {
        let vm = try liveVM()
        do throws(SystemCallError) { try vm.deassignIrqfd(eventFD: Int32(event.nativeHandle.rawValue), gsi: gsi) } catch { throw .systemCall(error) }
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
