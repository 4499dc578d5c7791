#if os(Linux)
import CLinuxKVM
import Glibc
public import IrqFdCore
import SystemPackage

/// The guest's RAM: one shared mapping of a memfd (memfd_create(2),
/// MAP_SHARED), so that a device in another process (a vhost-user backend)
/// can map the same pages: `descriptor` is what SET_MEM_TABLE passes, at
/// offset 0.
///
/// `@unchecked Sendable` because it holds the mapping as a raw pointer. The
/// guest writes this memory concurrently with the host by design, so every
/// host access that can race a running guest goes through the 32/64-bit
/// atomic accessors; byte copies (`load`, `bytes`) are for a guest that is
/// not running yet, or for regions the guest does not write.
public final class GuestMemory: @unchecked Sendable {
    /// The first byte of the mapping (guest-physical 0).
    public let base: UnsafeMutableRawPointer
    /// Bytes of RAM.
    public let size: Int

    /// The memfd behind the mapping (close-on-exec), owned by this object:
    /// borrow it to pass it to a backend, which maps it at offset 0.
    public let descriptor: Int32

    /// Makes a `size`-byte memfd (memfd_create(2), ftruncate(2): zeroed,
    /// sparse) and maps it shared (mmap(2), MAP_SHARED).
    public init(size: Int) throws(SystemCallError) {
        let fd = irqfd_memfd_create("irqfd guest RAM")
        guard fd >= 0 else { throw SystemCallError(call: "memfd_create(guest RAM)", errno: Errno(rawValue: errno)) }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = errno
            close(fd)
            throw SystemCallError(call: "ftruncate(guest RAM)", errno: Errno(rawValue: e))
        }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0), p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw SystemCallError(call: "mmap(guest RAM)", errno: Errno(rawValue: e))
        }
        base = p
        descriptor = fd
        self.size = size
    }

    deinit {
        munmap(base, size)
        close(descriptor)
    }

    /// Whether `[address, address + length)` lies inside RAM (for checking
    /// guest-supplied addresses before anyone dereferences them).
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        address <= UInt64(size) && length <= UInt64(size) - address
    }

    private func check(_ address: UInt64, _ length: Int) {
        precondition(address <= UInt64(size) && UInt64(length) <= UInt64(size) - address, "guest address 0x\(String(address, radix: 16)) + \(length) is outside RAM")
    }

    /// Copies `bytes` into RAM at `address`.
    public func load(_ bytes: [UInt8], at address: UInt64) {
        check(address, bytes.count)
        bytes.withUnsafeBytes { (base + Int(address)).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// Copies `count` bytes out of RAM.
    public func bytes(at address: UInt64, count: Int) -> [UInt8] {
        check(address, count)
        return Array(UnsafeRawBufferPointer(start: base + Int(address), count: count))
    }

    /// Atomic 32-bit read (for words a running guest writes).
    public func read32(at address: UInt64) -> UInt32 {
        check(address, 4)
        return irqfd_load32(base + Int(address))
    }

    /// Atomic 32-bit write.
    public func write32(_ value: UInt32, at address: UInt64) {
        check(address, 4)
        irqfd_store32(base + Int(address), value)
    }

    /// Atomic 64-bit read.
    public func read64(at address: UInt64) -> UInt64 {
        check(address, 8)
        return irqfd_load64(base + Int(address))
    }

    /// Atomic 64-bit write.
    public func write64(_ value: UInt64, at address: UInt64) {
        check(address, 8)
        irqfd_store64(base + Int(address), value)
    }
}
#endif
