public import IrqFdCore
public import IrqFdRouting
import Synchronization

#if os(Linux)
import IrqFdLinux
#endif

/// mshv's side of the routing core: MSHV_SET_MSI_ROUTING for the table,
/// MSHV_IRQFD to arm and disarm, eventfds for events. Everything else (GSI
/// allocation, batches, the twelve rules) is the same code KVM runs.
///
/// ## The GSI space (from the driver, not from a capability query)
/// - GSIs are `0..<MSHV_MAX_GUEST_IRQS` (4096) and a table holds at most 4096
///   entries; the driver answers EINVAL otherwise. mshv has no equivalent of
///   KVM_CAP_IRQ_ROUTING, so the limit is the driver constant `MSHV.maxGuestIrqs`.
/// - mshv has no in-kernel IOAPIC or PIC: the table holds only MSI entries, so
///   no entries are spent on an irqchip (KVM spends its default PIC/IOAPIC routes).
/// - Reserved: by default GSIs 0..<24 (`.ioapicPins`), where a VMM's userspace
///   IOAPIC keeps its pins on mshv as on KVM, so one VMM sees the same GSI
///   numbers on both backends. `.msiOnly` reserves GSI 0 alone: the driver's
///   slow injection path skips its "entry valid" check for GSI 0
///   (`mshv_assert_irq_slow` tests `guest_irq_num` before `girq_entry_valid`),
///   so GSI 0 is never handed out.
///
/// ## Messages
/// The driver takes the destination from address bits 19:12 only
/// (`mshv_copy_girq_info`) and refuses a non-zero `address_hi`; an MSI using
/// the extended destination ID (bits 11:5, APIC IDs above 255) would reach the
/// wrong vCPU, so `canDeliver` refuses it and `setMsi` throws
/// `undeliverableAddress` (rule 7). mshv partitions have at most 256 VPs.
///
/// It holds the partition weakly: routes must not keep a partition alive, and
/// once it is gone every call throws `partitionGone` (rule 12).
public final class MSHVRoutingKernel: RoutingKernel {
    private weak let partition: (any MSHVPartitionIoctls)?
    public let gsiLimit: UInt32 = MSHV.maxGuestIrqs
    public let reservedGsis: Range<UInt32>
    public let msiEntryCapacity = Int(MSHV.maxGuestIrqs)
    /// The table buffer, reused from push to push (grown, never shrunk).
    private let buffer = Mutex<[UInt8]>([])

    /// Which GSIs the routing core must never hand out.
    public enum GsiLayout: Sendable {
        /// GSIs 0..<24 stay with the VMM's IOAPIC pins, as under KVM's in-kernel IOAPIC.
        case ioapicPins
        /// Every GSI but 0 is free for MSI routes (see the type's documentation for GSI 0).
        case msiOnly

        var reserved: Range<UInt32> {
            switch self {
            case .ioapicPins: 0..<24
            case .msiOnly: 0..<1
            }
        }
    }

    /// A kernel programming `partition` through its ioctls.
    public init(partition: any MSHVPartitionIoctls, layout: GsiLayout = .ioapicPins) {
        self.partition = partition
        reservedGsis = layout.reserved
    }

    private func livePartition() throws(IrqFdError) -> any MSHVPartitionIoctls {
        guard let partition else { throw .partitionGone }
        return partition
    }

    /// x86 MSI addresses whose destination fits the 8 bits mshv reads.
    public func canDeliver(_ message: MsiMessage) -> Bool {
        message.isDeliverable && message.destinationID <= 0xFF
    }

    /// One MSHV_SET_MSI_ROUTING carrying `entries` (the whole table; mshv replaces it).
    public func pushRoutingTable(_ entries: [RoutingEntry]) throws(IrqFdError) {
        let partition = try livePartition()
        try buffer.withLock { (bytes: inout [UInt8]) throws(IrqFdError) in
            let size = MSHV.IrqTable.size(entries: entries.count)
            if bytes.count < size { bytes = [UInt8](repeating: 0, count: size) }
            let result = bytes.withUnsafeMutableBytes { raw in
                Result { () throws(SystemCallError) in
                    let table = UnsafeMutableRawBufferPointer(rebasing: raw[0..<size])
                    MSHV.IrqTable.encode(entries, into: table)
                    try partition.ioctl(MSHV.setMsiRouting, argument: table)
                }
            }
            do throws(SystemCallError) { try result.get() } catch { throw .systemCall(error) }
        }
    }

    /// MSHV_IRQFD (flags 0).
    ///
    /// Like KVM, the driver injects a signal already latched in the eventfd when
    /// it is assigned but does not consume it (`mshv_irqfd_assign` polls the
    /// eventfd and asserts the interrupt; only `mshv_irqfd_wakeup` reads the
    /// counter), so a signal delivered by an unmask would still read as pending
    /// afterwards. The latched count is consumed here and signalled again once
    /// armed: the wakeup path then reads it and injects once.
    public func assign(event: any Event, gsi: UInt32) throws(IrqFdError) {
        let latched = event.tryWait()
        defer { if latched { event.signal() } }
        try irqfd(.assign(fd: Self.descriptor(of: event), gsi: gsi))
    }

    /// MSHV_IRQFD with `1 << MSHV_IRQFD_BIT_DEASSIGN`.
    public func deassign(event: any Event, gsi: UInt32) throws(IrqFdError) {
        try irqfd(.deassign(fd: Self.descriptor(of: event), gsi: gsi))
    }

    private func irqfd(_ request: MSHV.UserIrqfd) throws(IrqFdError) {
        let partition = try livePartition()
        var bytes = request.bytes
        let result = bytes.withUnsafeMutableBytes { raw in
            Result { () throws(SystemCallError) in try partition.ioctl(MSHV.irqfd, argument: raw) }
        }
        do throws(SystemCallError) { try result.get() } catch { throw .systemCall(error) }
    }

    private static func descriptor(of event: any Event) -> Int32 {
        event.nativeHandle.fileDescriptor.rawValue
    }

    /// A fresh eventfd (EFD_NONBLOCK | EFD_CLOEXEC).
    public func makeEvent() throws(IrqFdError) -> any Event {
        #if os(Linux)
        try EventFD()
        #else
        throw .unsupported("mshv exists on Linux only")
        #endif
    }
}

/// The mshv irqfd backend: a routing-core partition over an mshv partition fd.
public typealias MSHVIrqFd = RoutedIrqFd<MSHVRoutingKernel>
/// A route of the mshv backend.
public typealias MSHVIrqFdRoute = RoutedIrqFdRoute<MSHVRoutingKernel>

extension RoutedIrqFd where Kernel == MSHVRoutingKernel {
    /// The irqfd partition of an mshv partition (an initialized one, in real use).
    public convenience init(partition: any MSHVPartitionIoctls, layout: MSHVRoutingKernel.GsiLayout = .ioapicPins) {
        self.init(kernel: MSHVRoutingKernel(partition: partition, layout: layout))
    }
}
