/// Why a descriptor chain cannot be served as the driver wrote it. The first
/// one met is kept; a device completes such a chain with an error status.
public enum ChainFault: Equatable, Sendable {
    /// The head names no descriptor (it is not below the queue size).
    case headOutOfRange(UInt16)
    /// A descriptor's `next` names no descriptor.
    case nextOutOfRange(UInt16)
    /// The chain has more descriptors than the ring: it loops (virtio 1.2 section 2.7.5.3.2).
    case loop
    /// VIRTQ_DESC_F_INDIRECT, which was not negotiated.
    case indirect
    /// An indirect descriptor that breaks virtio 1.2 section 2.7.5.3.1: with NEXT set, inside an
    /// indirect table, or with a length that is not a nonzero multiple of 16.
    case badIndirect
    /// A buffer with bytes outside guest memory.
    case outsideMemory(address: UInt64, length: UInt32)
    /// A device-readable descriptor after a device-writable one (virtio 1.2 section 2.7.4.2).
    case readableAfterWritable
    /// More descriptors than the device accepts in one request.
    case tooManyDescriptors(limit: Int)
    /// One descriptor longer than the device accepts.
    case descriptorTooLong(length: UInt32, limit: UInt32)
    /// The readable or the writable part is larger than the device accepts (at most what a used length holds).
    case tooLarge(limit: UInt64)
}

/// What a device accepts in one chain.
public struct ChainLimits: Sendable, Equatable {
    /// Descriptors per chain.
    public var maxDescriptors: Int
    /// Bytes per descriptor.
    public var maxDescriptorLength: UInt32
    /// Bytes of each direction; at most `UInt32.max`, the largest used length (virtio 1.2 section 2.7.8).
    public var maxBytes: UInt64

    /// These limits; `maxBytes` is capped to `UInt32.max`.
    public init(maxDescriptors: Int, maxDescriptorLength: UInt32 = .max, maxBytes: UInt64 = UInt64(UInt32.max)) {
        self.maxDescriptors = maxDescriptors
        self.maxDescriptorLength = maxDescriptorLength
        self.maxBytes = min(maxBytes, UInt64(UInt32.max))
    }
}

/// One chain of a split virtqueue's descriptor table, walked from its head
/// (virtio 1.2 section 2.7.5): the device-readable segments, then the
/// device-writable ones, each descriptor split where it crosses from one
/// memory region into the next.
///
/// The walk is bounded by the queue size (a looping chain ends it) and trusts
/// nothing in the table: a fault stops the collection of segments, but the walk
/// goes on to the chain's end so that a device can still find where to write
/// its status (`lastWritableByte`).
public struct DescriptorChain {
    /// The device-readable segments, in chain order.
    public var readable: [MemorySegment] = []
    /// The device-writable segments, in chain order.
    public var writable: [MemorySegment] = []
    /// Bytes in `readable`.
    public var readableBytes: UInt64 = 0
    /// Bytes in `writable`.
    public var writableBytes: UInt64 = 0
    /// Descriptors in the chain (as far as it was walked).
    public var descriptors = 0
    /// The first fault met; nil when the chain can be served.
    public var fault: ChainFault?
    /// The last byte of the chain's last device-writable descriptor when it is
    /// mapped and the chain ends: where virtio-blk's status and a virtio-net
    /// control queue's ack go. Nil for a looping chain.
    public var lastWritableByte: UnsafeMutableRawPointer?

    /// VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT (virtio 1.2 section 2.7.5).
    static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4

    /// Walks the chain at `head` in the descriptor table `table` (`queueSize`
    /// 16-byte entries, little-endian) over `memory`, within `limits`.
    ///
    /// With `indirectTables` (VIRTIO_F_INDIRECT_DESC negotiated) a descriptor
    /// with VIRTQ_DESC_F_INDIRECT ends the chain in the table it points to
    /// (virtio 1.2 section 2.7.5.3): it is not itself counted in
    /// `descriptors`, its WRITE flag is ignored, and the table's entries fall
    /// under the same `limits` as the direct ones. Without it, such a
    /// descriptor is the fault ``ChainFault/indirect``.
    public init(
        head: UInt16, table: UnsafeRawPointer, queueSize: UInt16, memory: GuestMemoryMap, limits: ChainLimits,
        indirectTables: Bool = false
    ) {
        guard head < queueSize else {
            fault = .headOutOfRange(head)
            return
        }
        var table = table
        var size = Int(queueSize)
        var index = Int(head)
        // Descriptors read from the current table: more than it holds means a loop.
        var walked = 0
        var inIndirect = false
        while true {
            guard walked < size else {
                fault = fault ?? .loop
                lastWritableByte = nil
                return
            }
            walked += 1
            let at = 16 * index
            let address = UInt64(littleEndian: table.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            let length = UInt32(littleEndian: table.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self))
            let flags = UInt16(littleEndian: table.loadUnaligned(fromByteOffset: at + 12, as: UInt16.self))
            let next = UInt16(littleEndian: table.loadUnaligned(fromByteOffset: at + 14, as: UInt16.self))
            if indirectTables, flags & Self.indirect != 0 {
                // Section 2.7.5.3.1: no NEXT beside it, none inside a table, whole descriptors only.
                guard !inIndirect, flags & Self.next == 0, length > 0, length % 16 == 0 else {
                    fault = fault ?? .badIndirect
                    lastWritableByte = nil
                    return
                }
                guard let entries = memory.contiguous(guest: address, length: UInt64(length)) else {
                    fault = fault ?? .outsideMemory(address: address, length: length)
                    lastWritableByte = nil
                    return
                }
                table = UnsafeRawPointer(entries)
                size = Int(length / 16)
                index = 0
                walked = 0
                inIndirect = true
                continue
            }
            descriptors += 1
            // An indirect table may hold 2^28 entries: past the limit its walk ends, status unknown.
            if inIndirect, descriptors > limits.maxDescriptors {
                fault = fault ?? .tooManyDescriptors(limit: limits.maxDescriptors)
                lastWritableByte = nil
                return
            }
            if flags & Self.write != 0 {
                lastWritableByte =
                    length > 0 && flags & Self.indirect == 0
                    ? memory.contiguous(guest: address &+ UInt64(length) &- 1, length: 1) : nil
            }
            if fault == nil { collect(address: address, length: length, flags: flags, memory: memory, limits: limits) }
            if flags & Self.next == 0 { return }
            guard Int(next) < size else {
                fault = fault ?? .nextOutOfRange(next)
                return
            }
            index = Int(next)
        }
    }

    /// Adds one descriptor's segments, or records why it cannot be served.
    private mutating func collect(
        address: UInt64, length: UInt32, flags: UInt16, memory: GuestMemoryMap, limits: ChainLimits
    ) {
        let writes = flags & Self.write != 0
        if flags & Self.indirect != 0 {
            fault = .indirect
        } else if !writes, !writable.isEmpty {
            fault = .readableAfterWritable
        } else if descriptors > limits.maxDescriptors {
            fault = .tooManyDescriptors(limit: limits.maxDescriptors)
        } else if length > limits.maxDescriptorLength {
            fault = .descriptorTooLong(length: length, limit: limits.maxDescriptorLength)
        } else if (writes ? writableBytes : readableBytes) + UInt64(length) > limits.maxBytes {
            fault = .tooLarge(limit: limits.maxBytes)
        } else if writes {
            // At most one segment per region crossed: the region count bounds it.
            if memory.segments(guest: address, length: UInt64(length), maximum: .max, into: &writable) {
                writableBytes += UInt64(length)
            } else {
                fault = .outsideMemory(address: address, length: length)
            }
        } else {
            if memory.segments(guest: address, length: UInt64(length), maximum: .max, into: &readable) {
                readableBytes += UInt64(length)
            } else {
                fault = .outsideMemory(address: address, length: length)
            }
        }
    }
}
