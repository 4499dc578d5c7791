#if os(Linux)
public import IrqFdCore
import IrqFdKVM
import IrqFdRelay
public import KVM
public import PCI
public import SystemPackage
public import Virtio

/// TinyVM as the VMM of its PCI devices: a slot on ``TinyVM/pci`` with the
/// function's BARs on the MMIO bus, the VM's irqfd partition and
/// KVM_SIGNAL_MSI, guest RAM, and KVM_IOEVENTFD doorbells.
extension TinyVM: VirtioHost {
    /// Puts `function` at 00:`device`.0 and its memory windows on the MMIO bus. Call before `start()`.
    public func plug(_ function: any PCIFunction, device: Int) {
        pci.plug(function, device: device)
        let window = PCIMemoryWindows(function)
        for range in function.memoryWindows { attach(mmio: range, window) }
    }

    /// The VM's partition (coalescing unless built without).
    public var irqfdPartition: any IrqFd { irqfd }
    /// KVM_SIGNAL_MSI on the VM.
    public var msiInjector: any MsiInjector { KVMSignalMsiInjector(vm: vm) }
    /// Hears of the partition's failed coalesced commits through ``commitErrors``.
    public func addCommitErrorListener(owner: AnyObject, _ report: @escaping @Sendable (IrqFdError) -> Void) {
        commitErrors.add(owner: owner, report)
    }
    /// Guest RAM: one memfd region at guest-physical 0.
    public var guestMemory: any GuestMemoryMap { memory }
    /// KVM_IOEVENTFD on the VM.
    public var doorbells: any Doorbells { KVMDoorbells(vm: vm) }
}

/// A PCI function's memory windows on TinyVM's MMIO bus.
final class PCIMemoryWindows: MMIODevice {
    let function: any PCIFunction
    init(_ function: any PCIFunction) { self.function = function }
    func read(address: UInt64, size: Int) -> UInt64 { function.read(address: address, size: size) }
    func write(address: UInt64, size: Int, value: UInt64) { function.write(address: address, size: size, value: value) }
}

/// Doorbells as KVM_IOEVENTFD bindings in MMIO space, with a data match.
public struct KVMDoorbells: Doorbells {
    /// The VM the bindings are made in.
    public let vm: VirtualMachine

    /// Doorbells in `vm`.
    public init(vm: VirtualMachine) { self.vm = vm }

    /// KVM_IOEVENTFD.
    public func bind(_ event: FileDescriptor, address: UInt64, length: Int, datamatch: UInt64) throws(SystemCallError) {
        try vm.assignIoeventfd(eventFD: event, address: address, length: UInt32(length), datamatch: datamatch)
    }

    /// KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN.
    public func unbind(
        _ event: FileDescriptor, address: UInt64, length: Int, datamatch: UInt64
    ) throws(SystemCallError) {
        try vm.deassignIoeventfd(
            eventFD: event, address: address, length: UInt32(length), datamatch: datamatch)
    }
}

extension GuestMemory: GuestMemoryMap {
    /// The one memfd region, at guest-physical 0 and offset 0.
    public var regions: [GuestMemoryRegion] {
        [
            GuestMemoryRegion(
                guestPhysicalAddress: 0, size: UInt64(size), hostAddress: UInt(bitPattern: base),
                descriptor: descriptor, offset: 0)
        ]
    }
}
#endif
