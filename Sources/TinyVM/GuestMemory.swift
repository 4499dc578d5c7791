#if os(Linux)
public import IrqFdLinux

/// The guest's RAM: one shared mapping of a memfd (IrqFdLinux's `MemfdMemory`),
/// so that a device in another process (a vhost-user backend) can map the same
/// pages: `descriptor` is what SET_MEM_TABLE passes, at offset 0.
///
/// `GuestMemory(size:)` seals the memfd's size (F_SEAL_SHRINK, F_SEAL_GROW,
/// F_SEAL_SEAL; `MemfdSeals.fixedSize`), as QEMU does for the RAM it shares: a
/// backend that maps it cannot truncate it, which would take the pages away
/// from under the running guest (KVM reports an emulation failure) and from
/// the VMM's own accesses (SIGBUS).
public typealias GuestMemory = MemfdMemory
#endif
