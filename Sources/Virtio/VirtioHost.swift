#if os(Linux)
public import IrqFdCore
public import PCI
public import SystemPackage

/// One region of guest RAM as a vhost-user backend maps it (vhost-user
/// SET_MEM_TABLE's VhostUserMemoryRegion).
public struct GuestMemoryRegion: Sendable, Hashable {
    /// Where the region starts in guest-physical address space.
    public var guestPhysicalAddress: UInt64
    /// Its length in bytes.
    public var size: UInt64
    /// Where the VMM mapped it in its own address space.
    public var hostAddress: UInt
    /// The file behind it (a memfd): borrowed from the ``GuestMemoryMap`` that
    /// owns it, and sent to the backend, which maps it at `offset`.
    public var descriptor: FileDescriptor
    /// The region's offset in `descriptor`'s file.
    public var offset: UInt64

    /// A region; `descriptor` stays its owner's.
    public init(
        guestPhysicalAddress: UInt64, size: UInt64, hostAddress: UInt, descriptor: FileDescriptor, offset: UInt64
    ) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.hostAddress = hostAddress
        self.descriptor = descriptor
        self.offset = offset
    }

    /// Whether `[address, address + length)` lies inside the region (no overflow, whatever the values).
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        address >= guestPhysicalAddress && address - guestPhysicalAddress <= size
            && length <= size - (address - guestPhysicalAddress)
    }
}

/// A VM's guest RAM as devices see it. The object owns the mappings and the
/// descriptors its regions borrow; a device holds it for as long as it lives.
public protocol GuestMemoryMap: AnyObject, Sendable {
    /// The RAM regions, each backed by a file a backend can map.
    var regions: [GuestMemoryRegion] { get }
}

extension GuestMemoryMap {
    /// Whether `[address, address + length)` lies inside one RAM region (for
    /// checking guest-supplied addresses before a backend sees them).
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        regions.contains { $0.contains(address, length: length) }
    }
}

/// Doorbells: a guest write to an MMIO address that signals an eventfd in the
/// kernel, with no exit to the VMM (on KVM: KVM_IOEVENTFD).
public protocol Doorbells: Sendable {
    /// Binds `event`: a `length`-byte write of `datamatch` at `address` signals it.
    func bind(_ event: FileDescriptor, address: UInt64, length: Int, datamatch: UInt64) throws(SystemCallError)
    /// Removes a binding made by ``bind(_:address:length:datamatch:)`` with the same arguments.
    func unbind(_ event: FileDescriptor, address: UInt64, length: Int, datamatch: UInt64) throws(SystemCallError)
}

/// Everything a virtio-pci device needs from its VMM: a PCI slot and the
/// routing of its BARs, MSI-X interrupts, guest RAM, and doorbells.
///
/// A device keeps ``guestMemory``, ``doorbells`` and what
/// `MsiInterruptHost` (PCI) gives it, never the host itself: a VMM holds its
/// devices, and holding it back would be a cycle.
public protocol VirtioHost: PCIHost, MsiInterruptHost {
    /// Guest RAM.
    var guestMemory: any GuestMemoryMap { get }
    /// The VM's doorbells.
    var doorbells: any Doorbells { get }
}
#endif
