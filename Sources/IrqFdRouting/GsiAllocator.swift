/// Hands out the lowest free GSI from a fixed space, skipping reserved ones.
///
/// A bitmap: with at most a few thousand GSIs, a word scan from the lowest
/// possibly-free word is cheaper than any tree.
public struct GsiAllocator: Sendable {
    private var words: [UInt64]
    private var lowestCandidateWord = 0
    /// The number of GSIs that may be live at once.
    public let capacity: Int
    /// GSIs now in use.
    public private(set) var used = 0

    /// An allocator over `0..<limit` with `reserved` never handed out, and at
    /// most `capacity` GSIs live at once (the table may hold fewer entries than GSIs).
    public init(limit: UInt32, reserved: Range<UInt32>, capacity: Int) {
        words = Array(repeating: 0, count: (Int(limit) + 63) / 64)
        // Mark everything past `limit` and everything reserved as taken.
        for gsi in Int(limit)..<(words.count * 64) { words[gsi / 64] |= 1 << UInt64(gsi % 64) }
        for gsi in reserved.clamped(to: 0..<limit) { words[Int(gsi) / 64] |= 1 << UInt64(gsi % 64) }
        let available = Int(limit) - reserved.clamped(to: 0..<limit).count
        self.capacity = max(0, min(available, capacity))
    }

    /// GSIs that can still be handed out.
    public var free: Int { capacity - used }

    /// Takes the lowest free GSI, or nil when `capacity` are in use.
    public mutating func allocate() -> UInt32? {
        guard used < capacity else { return nil }
        for index in lowestCandidateWord..<words.count where words[index] != .max {
            let bit = (~words[index]).trailingZeroBitCount
            words[index] |= 1 << UInt64(bit)
            lowestCandidateWord = index
            used += 1
            return UInt32(index * 64 + bit)
        }
        return nil
    }

    /// Returns `gsi` to the pool. Freeing a GSI that is not in use is a bug.
    public mutating func release(_ gsi: UInt32) {
        let index = Int(gsi) / 64
        let mask: UInt64 = 1 << UInt64(gsi % 64)
        precondition(words[index] & mask != 0, "GSI \(gsi) freed twice")
        words[index] &= ~mask
        lowestCandidateWord = min(lowestCandidateWord, index)
        used -= 1
    }

    /// Whether `gsi` is handed out (or reserved).
    public func isTaken(_ gsi: UInt32) -> Bool {
        words[Int(gsi) / 64] & (1 << UInt64(gsi % 64)) != 0
    }
}
