#if os(Linux)
extension VCPU.Exit {
    /// The value in the first `size` bytes (at most 8) of an I/O or MMIO
    /// exit's `data`: little-endian, as x86 stores it.
    package static func load(_ data: UnsafeMutableRawPointer, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<min(size, 8) { value |= UInt64(data.load(fromByteOffset: i, as: UInt8.self)) << (8 * UInt64(i)) }
        return value
    }

    /// Puts the low `size` bytes (at most 8) of `value` in an I/O or MMIO
    /// read's `data`, little-endian: what the guest's read returns.
    package static func store(_ value: UInt64, _ data: UnsafeMutableRawPointer, size: Int) {
        for i in 0..<min(size, 8) {
            data.storeBytes(of: UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))), toByteOffset: i, as: UInt8.self)
        }
    }
}
#endif
