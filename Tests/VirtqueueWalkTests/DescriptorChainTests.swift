import Testing
import VirtqueueWalk

/// A descriptor table and guest RAM in this process: chains written by hand, walked.
final class Table {
    let size: UInt16
    let table: UnsafeMutableRawBufferPointer
    let ram = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)

    init(size: UInt16) {
        self.size = size
        table = .allocate(byteCount: 16 * Int(size), alignment: 16)
        table.initializeMemory(as: UInt8.self, repeating: 0)
        ram.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit {
        table.deallocate()
        ram.deallocate()
    }

    func set(_ index: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) {
        table.storeBytes(of: address.littleEndian, toByteOffset: 16 * index, as: UInt64.self)
        table.storeBytes(of: length.littleEndian, toByteOffset: 16 * index + 8, as: UInt32.self)
        table.storeBytes(of: flags.littleEndian, toByteOffset: 16 * index + 12, as: UInt16.self)
        table.storeBytes(of: next.littleEndian, toByteOffset: 16 * index + 14, as: UInt16.self)
    }

    /// RAM as one region at guest-physical 0.
    var oneRegion: GuestMemoryMap { GuestMemoryMap([.init(guestPhysical: 0, size: 1 << 16, host: ram.baseAddress!)]) }

    func walk(_ head: UInt16, memory: GuestMemoryMap? = nil, limits: ChainLimits = .init(maxDescriptors: 128))
        -> DescriptorChain
    {
        DescriptorChain(
            head: head, table: UnsafeRawPointer(table.baseAddress!), queueSize: size, memory: memory ?? oneRegion,
            limits: limits)
    }
}

let next: UInt16 = 1
let writable: UInt16 = 2
let indirect: UInt16 = 4

@Suite struct DescriptorChainTests {
    @Test func aRequestChainSplitsIntoReadableThenWritableWithTheStatusLast() {
        let t = Table(size: 8)
        t.set(0, address: 0x100, length: 16, flags: next, next: 3)
        t.set(3, address: 0x200, length: 512, flags: next | writable, next: 5)
        t.set(5, address: 0x400, length: 1, flags: writable)
        let chain = t.walk(0)
        #expect(chain.fault == nil)
        #expect(chain.descriptors == 3)
        #expect(chain.readable == [MemorySegment(pointer: t.ram.baseAddress! + 0x100, length: 16)])
        #expect(chain.writable.map(\.length) == [512, 1])
        #expect(chain.readableBytes == 16 && chain.writableBytes == 513)
        #expect(chain.lastWritableByte == t.ram.baseAddress! + 0x400)
    }

    @Test func aLoopingChainEndsAtTheQueueSizeWithNoStatus() {
        let t = Table(size: 4)
        t.set(0, address: 0x100, length: 16, flags: next | writable, next: 1)
        t.set(1, address: 0x200, length: 1, flags: next | writable, next: 0)
        let chain = t.walk(0)
        #expect(chain.fault == .loop)
        #expect(chain.descriptors == 4)
        #expect(chain.lastWritableByte == nil)
    }

    @Test func headAndNextOutOfRangeAreFaults() {
        let t = Table(size: 4)
        #expect(t.walk(4).fault == .headOutOfRange(4))
        t.set(0, address: 0x100, length: 16, flags: next, next: 9)
        #expect(t.walk(0).fault == .nextOutOfRange(9))
    }

    @Test func limitsStopCollectingButTheWalkStillFindsTheStatus() {
        let t = Table(size: 256)
        t.set(0, address: 0x100, length: 16, flags: next, next: 1)
        for index in 1...200 {
            t.set(index, address: 0x1000, length: 512, flags: next | writable, next: UInt16(index + 1))
        }
        t.set(201, address: 0x400, length: 1, flags: writable)
        let chain = t.walk(0, limits: .init(maxDescriptors: 128))
        #expect(chain.fault == .tooManyDescriptors(limit: 128))
        #expect(chain.descriptors == 202)
        #expect(chain.lastWritableByte == t.ram.baseAddress! + 0x400)
        let long = t.walk(0, limits: .init(maxDescriptors: 256, maxDescriptorLength: 256))
        #expect(long.fault == .descriptorTooLong(length: 512, limit: 256))
        let large = t.walk(0, limits: .init(maxDescriptors: 256, maxBytes: 4096))
        #expect(large.fault == .tooLarge(limit: 4096))
    }

    @Test func theUsedLengthBoundHoldsWhateverTheLimitsSay() {
        #expect(ChainLimits(maxDescriptors: 1, maxBytes: .max).maxBytes == UInt64(UInt32.max))
    }

    @Test func indirectOutsideMemoryAndReadableAfterWritableAreFaults() {
        let t = Table(size: 8)
        t.set(0, address: 0x100, length: 16, flags: indirect)
        #expect(t.walk(0).fault == .indirect)
        t.set(0, address: 0xFFF0, length: 32, flags: next, next: 1)
        t.set(1, address: 0x400, length: 1, flags: writable)
        let outside = t.walk(0)
        #expect(outside.fault == .outsideMemory(address: 0xFFF0, length: 32))
        #expect(outside.lastWritableByte == t.ram.baseAddress! + 0x400)
        t.set(0, address: 0x400, length: 1, flags: next | writable, next: 1)
        t.set(1, address: 0x100, length: 16, flags: 0)
        #expect(t.walk(0).fault == .readableAfterWritable)
    }

    @Test func aBufferAcrossContiguousRegionsIsSplitAndAGapIsAFault() {
        let t = Table(size: 8)
        let base = t.ram.baseAddress!
        let contiguous = GuestMemoryMap([
            .init(guestPhysical: 0x1_0000, size: 0x100, host: base + 0x8000),
            .init(guestPhysical: 0, size: 0x1_0000, host: base),
        ])
        t.set(0, address: 0xFF80, length: 0x100, flags: writable)
        let chain = t.walk(0, memory: contiguous)
        #expect(chain.fault == nil)
        #expect(
            chain.writable == [
                MemorySegment(pointer: base + 0xFF80, length: 0x80),
                MemorySegment(pointer: base + 0x8000, length: 0x80),
            ])
        let gap = GuestMemoryMap([
            .init(guestPhysical: 0x1_0010, size: 0x100, host: base + 0x8000),
            .init(guestPhysical: 0, size: 0x1_0000, host: base),
        ])
        #expect(t.walk(0, memory: gap).fault == .outsideMemory(address: 0xFF80, length: 0x100))
        #expect(gap.segmentsCover(0xFFFF_FFFF_FFFF_FFF0, 0x20) == false)
    }
}

extension GuestMemoryMap {
    /// Whether `address..<address+length` is mapped (a range past 2^64 never is).
    func segmentsCover(_ address: UInt64, _ length: UInt64) -> Bool {
        var found: [MemorySegment] = []
        return self.segments(guest: address, length: length, maximum: .max, into: &found)
    }
}

extension Table {
    /// Writes descriptor `index` of an indirect table at guest-physical (and RAM offset) `at`.
    func setIndirect(_ at: Int, _ index: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) {
        let o = at + 16 * index
        ram.storeBytes(of: address.littleEndian, toByteOffset: o, as: UInt64.self)
        ram.storeBytes(of: length.littleEndian, toByteOffset: o + 8, as: UInt32.self)
        ram.storeBytes(of: flags.littleEndian, toByteOffset: o + 12, as: UInt16.self)
        ram.storeBytes(of: next.littleEndian, toByteOffset: o + 14, as: UInt16.self)
    }

    func walkIndirect(_ head: UInt16, limits: ChainLimits = .init(maxDescriptors: 128)) -> DescriptorChain {
        DescriptorChain(
            head: head, table: UnsafeRawPointer(table.baseAddress!), queueSize: size, memory: oneRegion,
            limits: limits, indirectTables: true)
    }
}

/// Indirect descriptor tables (virtio 1.2 section 2.7.5.3), walked only when
/// VIRTIO_F_INDIRECT_DESC was negotiated.
@Suite struct IndirectDescriptorTests {
    @Test func aChainEndingInAnIndirectTableIsServedUnderTheSameLimits() {
        let t = Table(size: 8)
        let base = t.ram.baseAddress!
        t.set(0, address: 0x100, length: 16, flags: next, next: 3)
        // The indirect descriptor's WRITE flag is ignored (section 2.7.5.3.2).
        t.set(3, address: 0x1000, length: 48, flags: indirect | writable)
        t.setIndirect(0x1000, 0, address: 0x200, length: 8, flags: next, next: 2)
        t.setIndirect(0x1000, 2, address: 0x300, length: 32, flags: writable | next, next: 1)
        t.setIndirect(0x1000, 1, address: 0x400, length: 2, flags: writable)
        let chain = t.walkIndirect(0)
        #expect(chain.fault == nil)
        #expect(chain.descriptors == 4, "the descriptor naming the table is not a buffer")
        #expect(
            chain.readable == [
                MemorySegment(pointer: base + 0x100, length: 16), MemorySegment(pointer: base + 0x200, length: 8),
            ])
        #expect(
            chain.writable == [
                MemorySegment(pointer: base + 0x300, length: 32), MemorySegment(pointer: base + 0x400, length: 2),
            ])
        #expect(chain.readableBytes == 24 && chain.writableBytes == 34)
        #expect(chain.lastWritableByte == base + 0x401)
        // Segment count, segment size and total bytes count direct and indirect descriptors together.
        #expect(t.walkIndirect(0, limits: .init(maxDescriptors: 3)).fault == .tooManyDescriptors(limit: 3))
        #expect(
            t.walkIndirect(0, limits: .init(maxDescriptors: 8, maxDescriptorLength: 16)).fault
                == .descriptorTooLong(length: 32, limit: 16))
        #expect(t.walkIndirect(0, limits: .init(maxDescriptors: 8, maxBytes: 20)).fault == .tooLarge(limit: 20))
        // Without the option nothing changes: the backend does not offer VIRTIO_F_INDIRECT_DESC.
        #expect(t.walk(0).fault == .indirect)
    }

    @Test func hostileIndirectTablesAreFaults() {
        let t = Table(size: 8)
        t.setIndirect(0x1000, 0, address: 0x200, length: 8, flags: writable)
        t.set(0, address: 0x1000, length: 16, flags: indirect | next, next: 1)
        t.set(1, address: 0x300, length: 1, flags: writable)
        #expect(t.walkIndirect(0).fault == .badIndirect, "INDIRECT with NEXT (section 2.7.5.3.1)")
        t.set(0, address: 0x1000, length: 0, flags: indirect)
        #expect(t.walkIndirect(0).fault == .badIndirect, "an empty table")
        t.set(0, address: 0x1000, length: 24, flags: indirect)
        #expect(t.walkIndirect(0).fault == .badIndirect, "a length that is not whole descriptors")
        t.set(0, address: 0xFFF0, length: 32, flags: indirect)
        #expect(t.walkIndirect(0).fault == .outsideMemory(address: 0xFFF0, length: 32), "a table outside memory")
        t.set(0, address: 0x1000, length: 32, flags: indirect)
        t.setIndirect(0x1000, 0, address: 0x1000, length: 16, flags: indirect)
        #expect(t.walkIndirect(0).fault == .badIndirect, "an indirect table inside an indirect table")
        t.setIndirect(0x1000, 0, address: 0x200, length: 8, flags: next, next: 1)
        t.setIndirect(0x1000, 1, address: 0x200, length: 8, flags: next, next: 0)
        let loop = t.walkIndirect(0)
        #expect(loop.fault == .loop && loop.lastWritableByte == nil, "a loop inside the table")
        t.setIndirect(0x1000, 1, address: 0x200, length: 8, flags: next, next: 2)
        #expect(t.walkIndirect(0).fault == .nextOutOfRange(2), "next beyond len/16, though RAM holds more")
        t.setIndirect(0x1000, 1, address: 0xFFFF, length: 2, flags: writable)
        #expect(t.walkIndirect(0).fault == .outsideMemory(address: 0xFFFF, length: 2), "a table entry outside memory")
        t.set(0, address: 0x300, length: 1, flags: writable | next, next: 1)
        t.set(1, address: 0x1000, length: 32, flags: indirect)
        t.setIndirect(0x1000, 1, address: 0x200, length: 8, flags: 0)
        #expect(t.walkIndirect(0).fault == .readableAfterWritable, "readable in the table after writable")
    }

    @Test func aHugeIndirectTableIsWalkedNoFurtherThanTheDescriptorLimit() {
        let t = Table(size: 4)
        t.set(0, address: 0x1000, length: 0x8000, flags: indirect)
        for i in 0..<0x800 {
            t.setIndirect(0x1000, i, address: 0x200, length: 1, flags: writable | next, next: UInt16(i + 1))
        }
        let chain = t.walkIndirect(0, limits: .init(maxDescriptors: 16))
        #expect(chain.fault == .tooManyDescriptors(limit: 16))
        #expect(chain.descriptors == 17 && chain.lastWritableByte == nil)
    }
}
