/// Guest-physical memory as a device sees it: regions, each mapped at a host
/// address. Ranges that cross from one region into the next are served when
/// the regions are contiguous in guest-physical space (a descriptor may span
/// them: virtio 1.2 section 2.7.5 puts no region boundary in a buffer).
///
/// The map holds raw pointers and checks only arithmetic: the caller keeps
/// the mappings alive and of the sizes it declared.
public struct GuestMemoryMap {
    /// One region: `size` bytes at guest-physical `guestPhysical`, mapped at `host`.
    public struct Region {
        /// Where the region starts in guest-physical address space.
        public var guestPhysical: UInt64
        /// Its length in bytes.
        public var size: UInt64
        /// Where its first byte is mapped in this process.
        public var host: UnsafeMutableRawPointer

        /// A region of `size` bytes at guest-physical `guestPhysical`, mapped at `host`.
        public init(guestPhysical: UInt64, size: UInt64, host: UnsafeMutableRawPointer) {
            self.guestPhysical = guestPhysical
            self.size = size
            self.host = host
        }
    }

    /// The regions, sorted by guest-physical address.
    public let regions: [Region]

    /// The map of `regions`; zero-sized regions and regions whose end
    /// overflows 64 bits are dropped (they cannot hold a byte).
    public init(_ regions: [Region]) {
        self.regions =
            regions
            .filter { $0.size > 0 && !$0.guestPhysical.addingReportingOverflow($0.size).overflow }
            .sorted { $0.guestPhysical < $1.guestPhysical }
    }

    /// The region holding guest-physical `address`, if one does.
    func region(containing address: UInt64) -> Region? {
        // Few regions (vhost-user sends at most 8): a linear search is the fastest.
        for region in regions where address >= region.guestPhysical && address - region.guestPhysical < region.size {
            return region
        }
        return nil
    }

    /// Appends the host segments that cover guest-physical
    /// `address..<address + length` to `segments`, one per region crossed;
    /// returns false (and appends nothing) when any byte is not mapped or
    /// `maximum` segments would be exceeded. A zero length appends nothing.
    public func segments(
        guest address: UInt64, length: UInt64, maximum: Int, into segments: inout [MemorySegment]
    ) -> Bool {
        guard length > 0 else { return true }
        guard !address.addingReportingOverflow(length - 1).overflow else { return false }
        let start = segments.count
        var at = address
        var remaining = length
        while remaining > 0 {
            guard segments.count < maximum, let region = region(containing: at) else {
                segments.removeSubrange(start...)
                return false
            }
            let offset = at - region.guestPhysical
            let take = min(remaining, region.size - offset)
            guard take <= UInt64(Int.max), offset <= UInt64(Int.max) else {
                segments.removeSubrange(start...)
                return false
            }
            segments.append(MemorySegment(pointer: region.host + Int(offset), length: Int(take)))
            at &+= take
            remaining -= take
        }
        return true
    }

    /// The host address of `address..<address + length` when it lies inside one region.
    public func contiguous(guest address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        guard let region = region(containing: address) else { return nil }
        let offset = address - region.guestPhysical
        guard length <= region.size - offset, offset <= UInt64(Int.max) else { return nil }
        return region.host + Int(offset)
    }
}

/// A run of guest memory mapped here.
public struct MemorySegment: Equatable {
    /// Its first byte.
    public var pointer: UnsafeMutableRawPointer
    /// Its length in bytes.
    public var length: Int

    /// `length` bytes at `pointer`.
    public init(pointer: UnsafeMutableRawPointer, length: Int) {
        self.pointer = pointer
        self.length = length
    }
}
