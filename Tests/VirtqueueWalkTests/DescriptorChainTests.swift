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

let next: UInt16 = 1, writable: UInt16 = 2, indirect: UInt16 = 4

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
        #expect(chain.writable == [
            MemorySegment(pointer: base + 0xFF80, length: 0x80), MemorySegment(pointer: base + 0x8000, length: 0x80),
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
