#if os(Linux)
public import IrqFdLinux
public import TinyVM
public import Virtio

/// A virtio-blk driver on the host, through the device's own MMIO entry
/// points (the code a guest access reaches), for the loops a 1M-instruction/s
/// guest is too slow for. The VM is built but not run: the backend reads and
/// writes the rings in the shared memfd all the same. Queue 0 has 32 entries,
/// its rings at 0x20000 (descriptors), 0x21000 (driver area) and 0x22000
/// (device area); request headers at 0x23000, status bytes at 0x23800, data
/// at 0x100000. How a test brings the device up (its `initialise`) is its own.
public struct BlkHostDriver {
    /// The device driven.
    public let device: VirtioBlkDevice
    /// The guest memory its rings and buffers are in.
    public let memory: GuestMemory
    /// The common configuration structure's address.
    public static let common = VirtioBlkDevice.virtioBase + VirtioBlkDevice.commonOffset
    /// Queue 0's descriptor table; the driver and device areas follow at 4 KiB steps.
    public static let ring: UInt64 = 0x20000
    /// Queue 0's size.
    public static let size = 32
    /// The driver area's idx as the driver last published it.
    public var avail: UInt16 = 0

    /// A driver of `device`, whose rings are in `memory`.
    public init(device: VirtioBlkDevice, memory: GuestMemory) {
        self.device = device
        self.memory = memory
    }

    /// Writes the common configuration field at `offset`.
    public func w(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        device.write(address: Self.common + offset, size: size, value: value)
    }

    /// Reads the common configuration field at `offset`.
    public func r(_ offset: UInt64, _ size: Int) -> UInt64 { device.read(address: Self.common + offset, size: size) }

    /// Submits `count` 512-byte reads of sectors first..<first+count (data
    /// buffers filled with 0xEE, status bytes 0xFF beforehand) and notifies.
    public mutating func submitReads(_ count: Int, first: Int = 0) {
        for i in 0..<count {
            let header = Self.ring + 0x3000 + 16 * UInt64(i)
            memory.write64(0, at: header)  // type IN, reserved
            memory.write64(UInt64(first + i), at: header + 8)
            memory.load([0xFF], at: Self.ring + 0x3800 + UInt64(i))
            memory.load([UInt8](repeating: 0xEE, count: 512), at: Self.buffer(i))
            let d = Self.ring + 16 * UInt64(3 * i)
            func desc(_ at: UInt64, _ addr: UInt64, _ len: UInt32, _ flags: UInt16, _ next: UInt16) {
                memory.write64(addr, at: at)
                memory.write64(UInt64(len) | UInt64(flags) << 32 | UInt64(next) << 48, at: at + 8)
            }
            desc(d, header, 16, 1, UInt16(3 * i + 1))
            desc(d + 16, Self.buffer(i), 512, 3, UInt16(3 * i + 2))
            desc(d + 32, Self.ring + 0x3800 + UInt64(i), 1, 2, 0)
            let slot = Self.ring + 0x1004 + 2 * UInt64(Int(avail) % Self.size)
            let word = memory.read32(at: slot & ~3)
            let shift = (slot & 2) * 8
            memory.write32(word & ~(0xFFFF << shift) | UInt32(3 * i) << shift, at: slot & ~3)
            avail &+= 1
        }
        memory.write32(UInt32(avail) << 16, at: Self.ring + 0x1000)  // flags 0, idx
        device.write(address: VirtioBlkDevice.notifyAddress(queue: 0), size: 2, value: 0)
    }

    /// Request `i`'s data buffer.
    public static func buffer(_ i: Int) -> UInt64 { 0x10_0000 + 512 * UInt64(i) }

    /// The device area's (used ring's) idx.
    public var used: UInt16 { UInt16(memory.read32(at: Self.ring + 0x2000) >> 16) }

    /// Request `i`'s status byte.
    public func statusByte(_ i: Int) -> UInt8 { memory.bytes(at: Self.ring + 0x3800 + UInt64(i), count: 1)[0] }
}
#endif
