#if os(Linux)
import CLinuxKVM
import Glibc
public import IrqFdCore
public import SystemPackage

/// The seals of a memfd (fcntl(2) F_ADD_SEALS and F_GET_SEALS): operations
/// that no process holding the file may perform any more. Values from the
/// kernel's include/uapi/linux/fcntl.h.
public struct MemfdSeals: OptionSet, Sendable, Hashable, CustomStringConvertible {
    /// The F_SEAL_* bits.
    public let rawValue: UInt32
    /// Seals from F_SEAL_* bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// F_SEAL_SEAL: no seal can be added any more.
    public static let seal = MemfdSeals(rawValue: 0x0001)
    /// F_SEAL_SHRINK: the file cannot be made smaller (ftruncate(2) fails with EPERM).
    public static let shrink = MemfdSeals(rawValue: 0x0002)
    /// F_SEAL_GROW: the file cannot be made larger.
    public static let grow = MemfdSeals(rawValue: 0x0004)
    /// F_SEAL_WRITE: the contents cannot be written.
    public static let write = MemfdSeals(rawValue: 0x0008)
    /// F_SEAL_FUTURE_WRITE: no new writable mapping or write(2); existing mappings keep writing.
    public static let futureWrite = MemfdSeals(rawValue: 0x0010)

    /// What guest RAM shared with another process carries (QEMU seals the
    /// same): its size is fixed, so a peer that maps it cannot truncate the
    /// pages from under the guest and the VMM (a SIGBUS on the next access),
    /// and the seals themselves are final.
    public static let fixedSize: MemfdSeals = [.shrink, .grow, .seal]

    /// The seals on `descriptor` (fcntl(2) F_GET_SEALS). A file that is not a
    /// memfd throws EINVAL. A backend checks the guest RAM it was sent with this.
    public static func of(_ descriptor: FileDescriptor) throws(SystemCallError) -> MemfdSeals {
        let seals = try retryingInterrupts("fcntl(F_GET_SEALS)") { irqfd_get_seals(descriptor.rawValue) }
        return MemfdSeals(rawValue: UInt32(seals))
    }

    /// The F_SEAL_* names, e.g. `[shrink, grow, seal]`.
    public var description: String {
        let names: [(MemfdSeals, String)] = [
            (.seal, "seal"), (.shrink, "shrink"), (.grow, "grow"), (.write, "write"), (.futureWrite, "futureWrite"),
        ]
        return "[" + names.filter { contains($0.0) }.map(\.1).joined(separator: ", ") + "]"
    }
}

/// Memory in a memfd (memfd_create(2)), mapped shared (mmap(2), MAP_SHARED):
/// memory a process in another address space maps too, by the descriptor
/// (vhost-user's SET_MEM_TABLE passes `fileDescriptor`, offset 0). This object
/// owns the memfd and the mapping.
///
/// `@unchecked Sendable` because it holds the mapping as a raw pointer. The
/// peer (or a guest) writes this memory concurrently with this process by
/// design, so every access that can race goes through the 32/64-bit atomic
/// accessors; byte copies are for memory nobody else writes at the time.
/// Every accessor is bounds-checked and traps outside the mapping (a host bug:
/// check guest-supplied addresses with ``contains(_:length:)`` first).
public final class MemfdMemory: @unchecked Sendable {
    /// The first byte of the mapping (offset 0 of the file).
    public let base: UnsafeMutableRawPointer
    /// Bytes of memory.
    public let size: Int
    /// The memfd (close-on-exec), owned by this object: borrow it to send it.
    public let fileDescriptor: FileDescriptor

    /// Makes a `size`-byte memfd (memfd_create(2) with MFD_CLOEXEC |
    /// MFD_ALLOW_SEALING; ftruncate(2): zeroed, sparse), seals it with
    /// `seals` (fcntl(2) F_ADD_SEALS) and maps it shared (mmap(2), MAP_SHARED,
    /// MAP_NORESERVE). The default seals fix the size (``MemfdSeals/fixedSize``).
    public init(size: Int, name: String = "irqfd guest RAM", seals: MemfdSeals = .fixedSize) throws(SystemCallError) {
        let fd = try retryingInterrupts("memfd_create(\(name))") {
            irqfd_memfd_create(name, UInt32(MFD_CLOEXEC | MFD_ALLOW_SEALING))
        }
        let descriptor = FileDescriptor(rawValue: fd)
        do throws(SystemCallError) {
            _ = try retryingInterrupts("ftruncate(\(name))") { ftruncate(fd, off_t(size)) }
            if !seals.isEmpty {
                _ = try retryingInterrupts("fcntl(F_ADD_SEALS)") { irqfd_add_seals(fd, seals.rawValue) }
            }
            guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0),
                mapping != MAP_FAILED
            else { throw SystemCallError(call: "mmap(\(name))", errno: Errno(rawValue: Glibc.errno)) }
            base = mapping
        } catch {
            try? descriptor.close()
            throw error
        }
        fileDescriptor = descriptor
        self.size = size
    }

    /// Maps `size` bytes of a memfd made elsewhere (mmap(2), MAP_SHARED, at
    /// offset 0), taking ownership of `descriptor`, which is closed when this
    /// object is released or, if the mapping fails, before this throws. How
    /// a backend maps the guest RAM it received (a memfd, or any file a peer
    /// shares, such as one in /dev/shm); ``seals()`` then says whether the
    /// sender fixed its size.
    public init(mapping descriptor: FileDescriptor, size: Int) throws(SystemCallError) {
        guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, descriptor.rawValue, 0),
            mapping != MAP_FAILED
        else {
            let error = SystemCallError(call: "mmap(MAP_SHARED)", errno: Errno(rawValue: Glibc.errno))
            try? descriptor.close()
            throw error
        }
        base = mapping
        fileDescriptor = descriptor
        self.size = size
    }

    deinit {
        munmap(base, size)
        try? fileDescriptor.close()
    }

    /// The memfd's seals (fcntl(2) F_GET_SEALS).
    public func seals() throws(SystemCallError) -> MemfdSeals { try MemfdSeals.of(fileDescriptor) }

    /// The memfd (borrowed): the name the guest code and vhost-user use for it.
    public var descriptor: FileDescriptor { fileDescriptor }

    /// Whether `[address, address + length)` lies inside the mapping (for
    /// checking guest-supplied addresses before anyone dereferences them).
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        address <= UInt64(size) && length <= UInt64(size) - address
    }

    private func check(_ address: UInt64, _ length: Int) {
        precondition(
            address <= UInt64(size) && UInt64(length) <= UInt64(size) - address,
            "address 0x\(String(address, radix: 16)) + \(length) is outside the \(size)-byte mapping")
    }

    /// Copies `bytes` into memory at `address`.
    public func load(_ bytes: [UInt8], at address: UInt64) {
        check(address, bytes.count)
        bytes.withUnsafeBytes { (base + Int(address)).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// Copies `count` bytes out of memory at `address`.
    public func bytes(at address: UInt64, count: Int) -> [UInt8] {
        check(address, count)
        return Array(UnsafeRawBufferPointer(start: base + Int(address), count: count))
    }

    /// Stores `value` little-endian at `address` (not atomic).
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
        check(address, MemoryLayout<T>.size)
        base.storeBytes(of: value.littleEndian, toByteOffset: Int(address), as: T.self)
    }

    /// Loads a little-endian `T` at `address` (not atomic).
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at address: UInt64) -> T {
        check(address, MemoryLayout<T>.size)
        return T(littleEndian: base.loadUnaligned(fromByteOffset: Int(address), as: T.self))
    }

    /// Atomic 32-bit read (acquire), for words a peer or a running guest writes.
    public func read32(at address: UInt64) -> UInt32 {
        check(address, 4)
        return irqfd_load32(base + Int(address))
    }

    /// Atomic 32-bit write (release).
    public func write32(_ value: UInt32, at address: UInt64) {
        check(address, 4)
        irqfd_store32(base + Int(address), value)
    }

    /// Atomic 64-bit read (acquire).
    public func read64(at address: UInt64) -> UInt64 {
        check(address, 8)
        return irqfd_load64(base + Int(address))
    }

    /// Atomic 64-bit write (release).
    public func write64(_ value: UInt64, at address: UInt64) {
        check(address, 8)
        irqfd_store64(base + Int(address), value)
    }
}
#endif
