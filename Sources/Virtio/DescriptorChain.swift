#if os(Linux)
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

    /// `count` bytes at `address`, or nil outside RAM.
    func bytes(at address: UInt64, count: Int) -> [UInt8]? {
        guard let p = pointer(address, length: UInt64(count)) else { return nil }
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    /// Copies `bytes` to `address`; false (nothing written) outside RAM.
    @discardableResult
    func write(_ bytes: some Collection<UInt8>, at address: UInt64) -> Bool {
        guard let p = pointer(address, length: UInt64(bytes.count)) else { return false }
        for (i, byte) in bytes.enumerated() { p.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
        return true
    }
}

/// Why a descriptor chain was refused (virtio 1.2 section 2.7.5: what a
/// driver must not do; the device answers such a chain with nothing).
enum DescriptorChainError: Error, Equatable {
    /// The head index is not below the queue size.
    case headOutOfRange
    /// A `next` index is not below the size of its table.
    case nextOutOfRange
    /// A descriptor, or an indirect table, is not inside RAM.
    case outsideRAM
    /// More descriptors than the table holds: the chain loops.
    case loop
    /// A device-readable descriptor after a device-writable one (section 2.7.4.2).
    case readableAfterWritable
    /// An indirect descriptor inside an indirect table, or with NEXT set too
    /// (section 2.7.5.3.1), or whose length is not a whole number of descriptors.
    case badIndirect
}

/// One split-ring descriptor chain (virtio 1.2 sections 2.7.5 and 2.7.5.3),
/// walked from its head: the device-readable buffers, then the
/// device-writable ones, each inside RAM. A chain that breaks a rule is
/// refused as a whole (``DescriptorChainError``), never half-followed.
struct DescriptorChain: Equatable {
    /// A buffer of the chain: guest-physical address and length.
    struct Buffer: Equatable {
        var address: UInt64
        var length: UInt32
    }

    /// VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT (section 2.7.5).
    static let next: UInt16 = 1
    static let write: UInt16 = 2
    static let indirect: UInt16 = 4

    /// The device-readable buffers, in order.
    var readable: [Buffer] = []
    /// The device-writable buffers, in order.
    var writable: [Buffer] = []

    /// Bytes the device may write.
    var writableCount: Int { writable.reduce(0) { $0 + Int($1.length) } }

    /// Walks the chain at `head` of the descriptor table at `table` (`size`
    /// entries). `allowIndirect`: VIRTIO_F_INDIRECT_DESC was negotiated.
    static func walk(
        head: UInt16, table: UInt64, size: UInt16, memory: GuestRAM, allowIndirect: Bool
    ) throws(DescriptorChainError) -> DescriptorChain {
        guard head < size else { throw .headOutOfRange }
        var chain = DescriptorChain()
        var tableAddress = table
        var tableSize = UInt32(size)
        var index = UInt32(head)
        var inIndirect = false
        var seen: UInt32 = 0
        while true {
            seen += 1
            guard seen <= tableSize else { throw .loop }
            let at = tableAddress + 16 * UInt64(index)
            guard let address = memory.load(UInt64.self, at: at), let length = memory.load(UInt32.self, at: at + 8),
                let flags = memory.load(UInt16.self, at: at + 12), let nextIndex = memory.load(UInt16.self, at: at + 14)
            else { throw .outsideRAM }
            if flags & indirect != 0 {
                guard allowIndirect, !inIndirect, flags & next == 0, length != 0, length % 16 == 0 else {
                    throw .badIndirect
                }
                guard memory.pointer(address, length: UInt64(length)) != nil else { throw .outsideRAM }
                tableAddress = address
                tableSize = length / 16
                index = 0
                inIndirect = true
                seen = 0
                continue
            }
            guard memory.pointer(address, length: UInt64(length)) != nil else { throw .outsideRAM }
            let buffer = Buffer(address: address, length: length)
            if flags & write != 0 {
                chain.writable.append(buffer)
            } else {
                guard chain.writable.isEmpty else { throw .readableAfterWritable }
                chain.readable.append(buffer)
            }
            guard flags & next != 0 else { return chain }
            guard UInt32(nextIndex) < tableSize else { throw .nextOutOfRange }
            index = UInt32(nextIndex)
        }
    }

    /// The device-readable bytes, concatenated, at most `limit` of them.
    func readableBytes(_ memory: GuestRAM, limit: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for buffer in readable where bytes.count < limit {
            let count = min(Int(buffer.length), limit - bytes.count)
            bytes += memory.bytes(at: buffer.address, count: count) ?? []
        }
        return bytes
    }

    /// Writes `bytes` across the device-writable buffers in order; returns
    /// how many were written (no more than they hold).
    func writeBack(_ bytes: [UInt8], _ memory: GuestRAM) -> UInt32 {
        var offset = 0
        for buffer in writable where offset < bytes.count {
            let count = min(Int(buffer.length), bytes.count - offset)
            memory.write(bytes[offset..<offset + count], at: buffer.address)
            offset += count
        }
        return UInt32(offset)
    }
}
#endif
