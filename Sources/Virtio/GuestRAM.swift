#if os(Linux)
import VirtqueueWalk

/// Guest RAM as the VMM reads and writes it for a queue it serves itself:
/// every access is checked against the RAM regions first, so an address the
/// guest wrote can point anywhere and cost nothing but a refusal.
struct GuestRAM {
    let regions: [GuestMemoryRegion]

    init(_ map: any GuestMemoryMap) { regions = map.regions }

    /// The host address of `[address, address + length)`, when one region holds all of it.
    func pointer(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        guard let region = regions.first(where: { $0.contains(address, length: length) }) else { return nil }
        return UnsafeMutableRawPointer(bitPattern: region.hostAddress + UInt(address - region.guestPhysicalAddress))
    }

    /// A little-endian integer at `address`, or nil outside RAM.
    func load<T: FixedWidthInteger>(_: T.Type, at address: UInt64) -> T? {
        guard let p = pointer(address, length: UInt64(MemoryLayout<T>.size)) else { return nil }
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    /// Stores a little-endian integer at `address`; false outside RAM.
    @discardableResult
    func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) -> Bool {
        guard let p = pointer(address, length: UInt64(MemoryLayout<T>.size)) else { return false }
        p.storeBytes(of: value.littleEndian, as: T.self)
        return true
    }

    /// The chain at `head` of the `size`-entry descriptor table at guest-physical
    /// `table`, walked by the walker the embedded backend uses; nil when the
    /// table is not inside one RAM region. A driver must not make a chain longer
    /// than the queue size (virtio 1.2 section 2.7.5.3.1), and each direction's
    /// bytes must fit a used length (section 2.7.8).
    func chain(head: UInt16, table: UInt64, size: UInt16, indirectTables: Bool) -> DescriptorChain? {
        guard let entries = pointer(table, length: 16 * UInt64(size)) else { return nil }
        let map = VirtqueueWalk.GuestMemoryMap(
            regions.compactMap { region in
                UnsafeMutableRawPointer(bitPattern: region.hostAddress).map {
                    .init(guestPhysical: region.guestPhysicalAddress, size: region.size, host: $0)
                }
            })
        return DescriptorChain(
            head: head, table: entries, queueSize: size, memory: map, limits: ChainLimits(maxDescriptors: Int(size)),
            indirectTables: indirectTables)
    }
}

extension DescriptorChain {
    /// The device-readable bytes, concatenated, at most `limit` of them.
    func readableBytes(limit: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for segment in readable where bytes.count < limit {
            let count = min(segment.length, limit - bytes.count)
            bytes += UnsafeRawBufferPointer(start: segment.pointer, count: count)
        }
        return bytes
    }

    /// Writes `bytes` across the device-writable segments in order; returns
    /// how many were written (no more than they hold).
    func writeBack(_ bytes: [UInt8]) -> UInt32 {
        var offset = 0
        for segment in writable where offset < bytes.count {
            let count = min(segment.length, bytes.count - offset)
            bytes[offset..<offset + count].withUnsafeBytes {
                segment.pointer.copyMemory(from: $0.baseAddress!, byteCount: count)
            }
            offset += count
        }
        return UInt32(offset)
    }
}
#endif
