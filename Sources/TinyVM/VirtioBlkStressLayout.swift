/// Where the virtio-blk lossless-under-load guest (virtio_blk_stress.S) takes
/// its parameters and leaves its results: 32-bit words; the host writes the
/// parameters before start and reads the rest while and after it runs.
///
/// The guest drives queue 0 of the device at 00:02.0 (size 256, MSI-X vector
/// 1, rings at 0x20000) with up to `maxInFlight` reads in flight, and takes
/// every completion in the vector's interrupt handler, never by polling: a
/// completion whose interrupt is lost stalls it for good. Request n reads
/// sector n & `sectorMask` into its slot's buffer; the image must hold
/// dword 128 k + j at dword j of sector k (`imageWord`), which the guest
/// checks in words 0 and 127 of each completed read.
public enum VirtioBlkStressLayout {
    /// Requests to complete in all (N).
    public static let total: UInt64 = 0x5C0
    /// Requests kept in flight (K, 1...`maxInFlight`).
    public static let inFlight: UInt64 = 0x5C4
    /// Request n reads sector n & mask (a power of two less one).
    public static let sectorMask: UInt64 = 0x5C8
    /// 1 once the first K requests are in flight, 2 once all N are completed.
    public static let phase: UInt64 = 0x5E0
    /// Requests completed.
    public static let completed: UInt64 = 0x5E4
    /// Completions whose status byte was not 0 (VIRTIO_BLK_S_OK).
    public static let badStatus: UInt64 = 0x5E8
    /// Completions whose data words were not the sector's.
    public static let badData: UInt64 = 0x5EC
    /// Used entries whose id named no slot with a request in flight.
    public static let badIDs: UInt64 = 0x5F0
    /// Requests completed a second time (their bitmap bit was already set).
    public static let duplicates: UInt64 = 0x5F4
    /// Requests submitted.
    public static let submitted: UInt64 = 0x5F8
    /// Queue interrupts that found no new used entry (already drained by an
    /// earlier handler run: coalescing, never an error).
    public static let emptyInterrupts: UInt64 = 0x5FC
    /// Used entries the guest consumed (its used index, unwrapped).
    public static let consumed: UInt64 = 0x400
    /// The guest's avail index, unwrapped.
    public static let availIndex: UInt64 = 0x404
    /// The queue's used ring idx (16 bits, at used + 2).
    public static let usedIndex: UInt64 = 0x22002
    /// Bit n is set once request n completed.
    public static let bitmap: UInt64 = 0x20_0000
    /// The most requests the guest keeps in flight: three descriptors each in a 256-entry table.
    public static let maxInFlight = 85
    /// The most requests the bitmap (2 MiB, up to 0x400000) can record.
    public static let maxTotal = 16 << 20

    /// Handler-run index `i` of IDT vector `vector`: device vector v is v, the fence is 33.
    public static func index(of vector: UInt8) -> Int { Int(vector & 0x3F) }
    /// Nonzero while the host holds index `i` masked; the guest counts handler runs that see it.
    public static func masked(_ i: Int) -> UInt64 { 0x7000 + 4 * UInt64(i) }
    /// Handler runs for index `i` on vCPU `cpu`.
    public static func runs(cpu: Int, _ i: Int) -> UInt64 { 0x7400 + 0x100 * UInt64(cpu) + 4 * UInt64(i) }
    /// Handler runs for index `i` on vCPU `cpu` while `masked(i)` was nonzero.
    public static func runsWhileMasked(cpu: Int, _ i: Int) -> UInt64 { 0x7800 + 0x100 * UInt64(cpu) + 4 * UInt64(i) }
    /// The request slot `s` carries now.
    public static func request(slot s: Int) -> UInt64 { 0x24000 + 4 * UInt64(s) }
    /// Slot `s`'s 512-byte buffer.
    public static func buffer(slot s: Int) -> UInt64 { 0x10_0000 + 512 * UInt64(s) }
    /// The IDT vector of MSI-X vector v: 0x40 + v, or 0x80 + v with `high`.
    public static func idtVector(msix v: Int, high: Bool = false) -> UInt8 { UInt8((high ? 0x80 : 0x40) + v) }
    /// The fence: IDT vector 0x21 (index 33), in a lower priority class than any device vector.
    public static let fenceVector: UInt8 = 0x21
    /// The image word at byte offset 4 j of sector k: 128 k + j.
    public static func imageWord(sector k: Int, dword j: Int) -> UInt32 { UInt32(truncatingIfNeeded: 128 * k + j) }
}

#if os(Linux)
extension TinyVM {
    /// Loads the virtio-blk stress guest (`GuestProgram.virtioBlkStress`),
    /// gives it its parameters (`total` requests, `inFlight` of them at a
    /// time, request n reading sector n mod `sectors`, a power of two) and
    /// starts the vCPUs.
    public func startVirtioBlkStress(total: Int, inFlight: Int, sectors: Int) throws(TinyVMError) {
        try load(GuestProgram.virtioBlkStress.image)
        memory.write32(UInt32(total), at: VirtioBlkStressLayout.total)
        memory.write32(UInt32(inFlight), at: VirtioBlkStressLayout.inFlight)
        memory.write32(UInt32(sectors - 1), at: VirtioBlkStressLayout.sectorMask)
        start()
    }
}
#endif
