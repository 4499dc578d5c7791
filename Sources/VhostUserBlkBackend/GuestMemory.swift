#if os(Linux)
import CBlkBackend
import IrqFdCore
import IrqFdLinux
import SystemPackage

/// One guest memory region mapped here (SET_MEM_TABLE): its file mapped
/// shared from offset 0 for mmap_offset + size bytes by IrqFdLinux's
/// `MemfdMemory`, which owns the descriptor and the mapping, and guarded
/// against SIGBUS while it is mapped (`blk_guard_add`: a file truncated
/// under the mapping faults; CBlkBackend's handler puts a private page over
/// the faulting one). Released, it stops guarding, then unmaps and closes.
package final class MappedRegion {
    let guestPhysical: UInt64
    let user: UInt64
    let size: UInt64
    /// The region's first byte (mapping + mmap_offset).
    let host: UnsafeMutableRawPointer
    private let mapping: MemfdMemory

    /// Maps `length` bytes of `file` (taken: closed if this throws) and guards them.
    init(_ region: RegionDescription, file: FileDescriptor, length: Int) throws(SystemCallError) {
        let mapping = try MemfdMemory(mapping: file, size: length)
        // Released on this throw: unmapped and closed. ENOSPC: every guard slot is taken.
        _ = try retryingInterrupts("blk_guard_add") { blk_guard_add(mapping.base, length) }
        self.mapping = mapping
        guestPhysical = region.guestPhysical
        user = region.user
        size = region.size
        host = mapping.base + Int(region.mmapOffset)
    }

    // Before the mapping goes: a fault in a range that is no longer guarded is not contained.
    deinit { blk_guard_remove(mapping.base) }
}

extension BlockServer {
    /// The host address of front-end user addresses `address..<address+length`, inside one region.
    func host(user address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for region in regions where address >= region.user {
            let offset = address - region.user
            if offset <= region.size, length <= region.size - offset { return region.host + Int(offset) }
        }
        return nil
    }

    /// The descriptor table, available ring and used ring of `queue`, when all three are mapped.
    func rings(
        of queue: QueueState
    ) -> (descriptors: UnsafeMutableRawPointer, available: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer)? {
        let n = UInt64(queue.size)
        guard n > 0,
            let descriptors = host(user: queue.descriptorUser, length: 16 * n),
            let available = host(user: queue.availableUser, length: 6 + 2 * n),
            let used = host(user: queue.usedUser, length: 6 + 8 * n)
        else { return nil }
        return (descriptors, available, used)
    }
}
#endif
