#if os(Linux)
import CLinuxKVM
import Glibc
public import IrqFdCore
import Synchronization
public import SystemPackage

/// A KVM VM (the descriptor KVM_CREATE_VM returned), owned by this object.
///
/// Every ioctl goes through `ioctl(_:counter:_:)`, so each is counted and can
/// be made to fail on purpose by the package's tests (`IoctlFaultHook`).
public final class VirtualMachine: Sendable {
    let descriptor: OwnedDescriptor
    /// The /dev/kvm handle this VM was created from.
    public let system: KVMSystem
    /// Interrupt-related ioctls made on this VM.
    package let counters = IoctlCounters()
    /// Whether a fault hook is installed: the only cost to a VM without one.
    private let hooked = Atomic<Bool>(false)
    private let faultHook = Mutex<(any IoctlFaultHook)?>(nil)

    init(descriptor: OwnedDescriptor, system: KVMSystem) {
        self.descriptor = descriptor
        self.system = system
    }

    /// The VM descriptor, for code that must pass it to the kernel itself
    /// (the benchmark's raw floor). Borrowed: this object owns it.
    public var rawDescriptor: Int32 { descriptor.raw }

    @inline(__always)
    func ioctl(_ call: StaticString, _ body: () -> Int32) throws(SystemCallError) -> Int32 {
        counters.total.add(1, ordering: .relaxed)
        if hooked.load(ordering: .acquiring), let fault = faultHook.withLock({ $0 })?.fault(for: call) { throw fault }
        return try retryingIoctl(call, body)
    }

    /// Test hook (package access, not API): installs the hook `make` returns
    /// unless one is installed already, and returns the installed one. Used
    /// by KVMFaultInjection, a target no product links.
    package func installFaultHook(_ make: () -> any IoctlFaultHook) -> any IoctlFaultHook {
        let hook = faultHook.withLock { installed in
            if installed == nil { installed = make() }
            return installed!
        }
        hooked.store(true, ordering: .releasing)
        return hook
    }

    /// KVM_CHECK_EXTENSION on the VM (some answers are per VM): 0 if unsupported.
    public func checkExtension(_ capability: Capability) -> Int {
        Int(max(0, irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_CHECK_EXTENSION, UInt(capability.rawValue))))
    }

    /// KVM_SET_TSS_ADDR: three pages of guest-physical space Intel's VMX needs
    /// for real mode; must be outside RAM and MMIO.
    public func setTSSAddress(_ address: UInt64) throws(SystemCallError) {
        _ = try ioctl("KVM_SET_TSS_ADDR") { irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_SET_TSS_ADDR, UInt(address)) }
    }

    /// KVM_SET_IDENTITY_MAP_ADDR: one page for VMX's real-mode identity map.
    public func setIdentityMapAddress(_ address: UInt64) throws(SystemCallError) {
        var value = address
        _ = try ioctl("KVM_SET_IDENTITY_MAP_ADDR") {
            irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_SET_IDENTITY_MAP_ADDR, &value)
        }
    }

    /// KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and local APICs. Also installs
    /// KVM's default routes for GSIs 0..<24.
    public func createIrqchip() throws(SystemCallError) {
        _ = try ioctl("KVM_CREATE_IRQCHIP") { irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_CREATE_IRQCHIP, 0) }
    }

    /// KVM_SET_USER_MEMORY_REGION: maps `size` bytes of host memory at `host`
    /// into the guest at `guestPhysical`, as memory slot `slot`.
    public func setUserMemoryRegion(slot: UInt32, guestPhysical: UInt64, size: UInt64, host: UnsafeMutableRawPointer)
        throws(SystemCallError)
    {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: 0, guest_phys_addr: guestPhysical, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: host)))
        _ = try ioctl("KVM_SET_USER_MEMORY_REGION") {
            irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_SET_USER_MEMORY_REGION, &region)
        }
    }

    /// KVM_SET_GSI_ROUTING: replaces the whole GSI routing table with `table`.
    public func setGSIRouting(_ table: borrowing GSIRoutingTable) throws(SystemCallError) {
        counters.routingPushes.add(1, ordering: .relaxed)
        _ = try table.withUnsafeBytes { (raw: UnsafeMutableRawPointer) throws(SystemCallError) in
            try ioctl("KVM_SET_GSI_ROUTING") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_SET_GSI_ROUTING, raw) }
        }
    }

    /// KVM_IRQFD: arms eventfd `eventFD` (borrowed: the caller keeps owning it and must
    /// deassign before closing it) on `gsi`; a signal then injects the GSI's route.
    public func assignIrqfd(eventFD: FileDescriptor, gsi: UInt32) throws(SystemCallError) {
        counters.irqfdAssigns.add(1, ordering: .relaxed)
        var request = kvm_irqfd(
            fd: UInt32(bitPattern: eventFD.rawValue), gsi: gsi, flags: 0, resamplefd: 0,
            pad: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        _ = try ioctl("KVM_IRQFD") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_IRQFD, &request) }
    }

    /// KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN: disarms; later signals stay in the eventfd.
    public func deassignIrqfd(eventFD: FileDescriptor, gsi: UInt32) throws(SystemCallError) {
        counters.irqfdDeassigns.add(1, ordering: .relaxed)
        var request = kvm_irqfd(
            fd: UInt32(bitPattern: eventFD.rawValue), gsi: gsi, flags: IRQFD_KVM_IRQFD_FLAG_DEASSIGN, resamplefd: 0,
            pad: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        _ = try ioctl("KVM_IRQFD") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_IRQFD, &request) }
    }

    /// Which bus a KVM_IOEVENTFD binding listens on.
    public enum IoEventSpace: Sendable, Equatable {
        /// Guest-physical memory (an MMIO write).
        case mmio
        /// I/O ports (KVM_IOEVENTFD_FLAG_PIO).
        case pio
    }

    /// KVM_IOEVENTFD: a guest write of `length` bytes (1, 2, 4 or 8; 0 with
    /// no datamatch for any length on MMIO) at `address` signals `eventFD` in
    /// the kernel instead of exiting to the VMM. With `datamatch` only a write
    /// of exactly that value does (KVM_IOEVENTFD_FLAG_DATAMATCH); other writes
    /// exit as usual. The eventfd is borrowed: the caller keeps owning it and
    /// must deassign before closing it.
    public func assignIoeventfd(
        eventFD: FileDescriptor, address: UInt64, length: UInt32, datamatch: UInt64? = nil, space: IoEventSpace = .mmio
    ) throws(SystemCallError) {
        counters.ioeventfdAssigns.add(1, ordering: .relaxed)
        try ioeventfd(eventFD, address, length, datamatch, space, deassign: false)
    }

    /// KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN: removes the binding
    /// made with the same fd, address, length, datamatch and space; writes
    /// exit to the VMM again.
    public func deassignIoeventfd(
        eventFD: FileDescriptor, address: UInt64, length: UInt32, datamatch: UInt64? = nil, space: IoEventSpace = .mmio
    ) throws(SystemCallError) {
        counters.ioeventfdDeassigns.add(1, ordering: .relaxed)
        try ioeventfd(eventFD, address, length, datamatch, space, deassign: true)
    }

    /// KVM_IOEVENTFD, assigning or deassigning.
    private func ioeventfd(
        _ fd: FileDescriptor, _ address: UInt64, _ length: UInt32, _ datamatch: UInt64?, _ space: IoEventSpace,
        deassign: Bool
    ) throws(SystemCallError) {
        var flags: UInt32 = 0
        if datamatch != nil { flags |= IRQFD_KVM_IOEVENTFD_FLAG_DATAMATCH }
        if space == .pio { flags |= IRQFD_KVM_IOEVENTFD_FLAG_PIO }
        if deassign { flags |= IRQFD_KVM_IOEVENTFD_FLAG_DEASSIGN }
        var request = kvm_ioeventfd()
        request.datamatch = datamatch ?? 0
        request.addr = address
        request.len = length
        request.fd = fd.rawValue
        request.flags = flags
        _ = try ioctl("KVM_IOEVENTFD") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_IOEVENTFD, &request) }
    }

    /// KVM_SIGNAL_MSI: injects one MSI now. Returns true if it was delivered,
    /// false if the guest blocked it (e.g. its APIC is disabled).
    @discardableResult
    public func signalMsi(address: UInt64, data: UInt32) throws(SystemCallError) -> Bool {
        counters.signalMsis.add(1, ordering: .relaxed)
        var msi = kvm_msi(
            address_lo: UInt32(truncatingIfNeeded: address), address_hi: UInt32(truncatingIfNeeded: address >> 32),
            data: data, flags: 0, devid: 0, pad: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        return try ioctl("KVM_SIGNAL_MSI") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_SIGNAL_MSI, &msi) } > 0
    }

    /// KVM_CREATE_VCPU: vCPU `id` (its initial APIC ID), with its `kvm_run` mapped.
    public func createVCPU(id: UInt32) throws(SystemCallError) -> VCPU {
        let mmapSize = try system.vcpuMmapSize()
        let fd = try ioctl("KVM_CREATE_VCPU") { irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_CREATE_VCPU, UInt(id)) }
        let owned = OwnedDescriptor(fd)
        guard let run = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), run != MAP_FAILED else {
            throw SystemCallError(call: "mmap(kvm_run)", errno: Errno(rawValue: errno))
        }
        return VCPU(id: id, descriptor: owned, run: run, mmapSize: mmapSize, vm: self)
    }
}
/// Test hook (package access, not API): decides, per ioctl, whether it fails
/// on purpose. The package's tests install one (KVMFaultInjection's
/// `FaultInjector`) to check that every operation stays consistent when the
/// kernel says no.
package protocol IoctlFaultHook: AnyObject, Sendable {
    /// The error `call` must fail with now, or nil to make the call.
    func fault(for call: StaticString) -> SystemCallError?
}
#endif
