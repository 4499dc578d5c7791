#if os(Linux)
import CBlkBackend
import Glibc

/// One guest memory region mapped here (SET_MEM_TABLE): the fd mapped
/// MAP_SHARED from offset 0 for mmap_offset + size bytes.
package struct MappedRegion {
    var guestPhysical: UInt64
    var user: UInt64
    var size: UInt64
    var host: UnsafeMutableRawPointer  // the region's first byte (mapping + mmap_offset)
    var mapping: UnsafeMutableRawPointer
    var mappingLength: Int
}

extension BlockServer {
    func unmapRegions() {
        for region in regions {
            blk_guard_remove(region.mapping)
            munmap(region.mapping, region.mappingLength)
        }
        regions = []
    }

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
