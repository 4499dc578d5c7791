import IrqFdCore
public import IrqFdRouting

// The mshv user ABI this backend speaks, written out in Swift rather than taken
// from a kernel header (there is no <linux/mshv.h> on most machines, and the
// package must build without one).
//
// Source of every number, size, offset and flag below: the kernel's
// `include/uapi/linux/mshv.h` as in mainline Linux (torvalds/linux, stored copy
// at commit 3ab7ae8e07f888f223027f0ef84d33e43919ad55; the header entered
// mainline with the mshv root-partition driver, Linux 6.15), and the driver that
// reads these structures: `drivers/hv/mshv_eventfd.c` (MSHV_IRQFD),
// `drivers/hv/mshv_root_main.c` and `drivers/hv/mshv_irq.c`
// (MSHV_SET_MSI_ROUTING), `drivers/hv/mshv_root.h` (MSHV_MAX_GUEST_IRQS).
//
//     #define MSHV_IOCTL            0xB8
//     enum { MSHV_IRQFD_BIT_DEASSIGN, MSHV_IRQFD_BIT_RESAMPLE, MSHV_IRQFD_BIT_COUNT };
//     struct mshv_user_irqfd { __s32 fd; __s32 resamplefd; __u32 gsi; __u32 flags; };
//     struct mshv_user_irq_entry { __u32 gsi; __u32 address_lo; __u32 address_hi; __u32 data; };
//     struct mshv_user_irq_table { __u32 nr; __u32 rsvd; /* MBZ */ struct mshv_user_irq_entry entries[]; };
//     #define MSHV_CREATE_PARTITION _IOW(MSHV_IOCTL, 0x00, struct mshv_create_partition)  /* /dev/mshv */
//     #define MSHV_INITIALIZE_PARTITION _IO(MSHV_IOCTL, 0x00)                            /* partition fd */
//     #define MSHV_IRQFD            _IOW(MSHV_IOCTL, 0x03, struct mshv_user_irqfd)        /* partition fd */
//     #define MSHV_SET_MSI_ROUTING  _IOW(MSHV_IOCTL, 0x05, struct mshv_user_irq_table)    /* partition fd */
//
// The out-of-tree mshv driver that predates mainline used other numbers (its
// MSHV_IRQFD was _IOW(0xB8, 0x0E, struct mshv_irqfd)); only the mainline ABI is
// encoded here.

/// An ioctl(2) request number built by the kernel's `_IOC(dir, type, nr, size)`
/// formula, as `include/uapi/asm-generic/ioctl.h` lays it out: 8 bits of
/// number, 8 of type, 14 of argument size, 2 of direction. mshv exists on
/// x86-64 and arm64, which both use this generic layout.
public struct IoctlRequest: Hashable, Sendable, CustomStringConvertible {
    /// The request's macro name, for error messages (`"MSHV_IRQFD"`).
    public let name: String
    /// The number passed to ioctl(2).
    public let number: UInt

    /// Data moves from the caller to the kernel (`_IOC_WRITE`).
    public static let directionWrite: UInt = 1
    /// Data moves from the kernel to the caller (`_IOC_READ`).
    public static let directionRead: UInt = 2

    /// `_IOC(direction, type, nr, size)`.
    public init(name: String, direction: UInt, type: UInt8, number nr: UInt8, size: Int) {
        precondition(size >= 0 && size < 1 << 14, "_IOC sizes have 14 bits")
        precondition(direction < 4, "_IOC directions have 2 bits")
        self.name = name
        number = direction << 30 | UInt(size) << 16 | UInt(type) << 8 | UInt(nr)
    }

    /// `_IO(type, nr)`: no argument.
    public static func none(_ name: String, type: UInt8, number: UInt8) -> IoctlRequest {
        IoctlRequest(name: name, direction: 0, type: type, number: number, size: 0)
    }

    /// `_IOW(type, nr, T)` with `sizeof(T) == size`.
    public static func write(_ name: String, type: UInt8, number: UInt8, size: Int) -> IoctlRequest {
        IoctlRequest(name: name, direction: directionWrite, type: type, number: number, size: size)
    }

    /// The direction bits (`_IOC_DIR`).
    public var direction: UInt { number >> 30 }
    /// The argument size encoded in the number (`_IOC_SIZE`).
    public var argumentSize: Int { Int((number >> 16) & 0x3FFF) }
    /// The type (magic) byte (`_IOC_TYPE`).
    public var type: UInt8 { UInt8(truncatingIfNeeded: number >> 8) }
    /// The request's number within its type (`_IOC_NR`).
    public var ordinal: UInt8 { UInt8(truncatingIfNeeded: number) }

    public var description: String { "\(name) (0x\(String(number, radix: 16)))" }
}

/// The mshv ABI: ioctl numbers, limits and structure encodings.
public enum MSHV {
    /// `MSHV_IOCTL`, the type byte of every mshv request.
    public static let ioctlType: UInt8 = 0xB8

    /// `MSHV_CREATE_PARTITION` = `_IOW(0xB8, 0x00, struct mshv_create_partition)`, on /dev/mshv.
    public static let createPartition = IoctlRequest.write(
        "MSHV_CREATE_PARTITION", type: ioctlType, number: 0x00, size: CreatePartition.size)
    /// `MSHV_INITIALIZE_PARTITION` = `_IO(0xB8, 0x00)`, on a partition fd.
    public static let initializePartition = IoctlRequest.none(
        "MSHV_INITIALIZE_PARTITION", type: ioctlType, number: 0x00)
    /// `MSHV_IRQFD` = `_IOW(0xB8, 0x03, struct mshv_user_irqfd)`, on a partition fd.
    public static let irqfd = IoctlRequest.write("MSHV_IRQFD", type: ioctlType, number: 0x03, size: UserIrqfd.size)
    /// `MSHV_SET_MSI_ROUTING` = `_IOW(0xB8, 0x05, struct mshv_user_irq_table)`, on a partition fd.
    /// The encoded size is the 8-byte header only: the entries are a flexible array.
    public static let setMsiRouting = IoctlRequest.write(
        "MSHV_SET_MSI_ROUTING", type: ioctlType, number: 0x05, size: IrqTable.headerSize)

    /// `MSHV_MAX_GUEST_IRQS` (drivers/hv/mshv_root.h): the driver rejects a
    /// routing entry whose GSI is not below this (EINVAL), and a table of more
    /// entries than this (EINVAL). It is a driver constant: mshv has no
    /// capability query for it, unlike KVM_CAP_IRQ_ROUTING.
    public static let maxGuestIrqs: UInt32 = 4096

    /// `struct mshv_user_irqfd`, 16 bytes: `fd` at 0 (s32), `resamplefd` at 4
    /// (s32), `gsi` at 8 (u32), `flags` at 12 (u32).
    public struct UserIrqfd: Hashable, Sendable {
        /// `sizeof(struct mshv_user_irqfd)`.
        public static let size = 16
        /// Byte offsets of the fields, in declaration order.
        public static let offsets = (fd: 0, resamplefd: 4, gsi: 8, flags: 12)
        /// `1 << MSHV_IRQFD_BIT_DEASSIGN`: remove the irqfd matching fd and gsi.
        public static let flagDeassign: UInt32 = 1 << 0
        /// `1 << MSHV_IRQFD_BIT_RESAMPLE`: level-triggered with a resample eventfd (not used here).
        public static let flagResample: UInt32 = 1 << 1
        /// `MSHV_IRQFD_FLAGS_MASK`: the driver refuses any other bit (EINVAL).
        public static let flagsMask: UInt32 = (1 << 2) - 1

        /// The eventfd to arm or disarm.
        public var fd: Int32
        /// The resample eventfd; read by the driver only with `flagResample`.
        public var resamplefd: Int32
        /// The GSI whose routing entry a signal injects.
        public var gsi: UInt32
        /// `flagDeassign` / `flagResample`.
        public var flags: UInt32

        /// A request with every field given.
        public init(fd: Int32, resamplefd: Int32 = 0, gsi: UInt32, flags: UInt32) {
            self.fd = fd
            self.resamplefd = resamplefd
            self.gsi = gsi
            self.flags = flags
        }

        /// Arms eventfd `fd` on `gsi` (flags 0).
        public static func assign(fd: Int32, gsi: UInt32) -> UserIrqfd { UserIrqfd(fd: fd, gsi: gsi, flags: 0) }
        /// Disarms eventfd `fd` from `gsi` (`flagDeassign`).
        public static func deassign(fd: Int32, gsi: UInt32) -> UserIrqfd {
            UserIrqfd(fd: fd, gsi: gsi, flags: flagDeassign)
        }

        /// The 16 bytes the kernel copies in (little-endian, as on x86-64 and arm64).
        public var bytes: [UInt8] {
            var out = [UInt8]()
            out.reserveCapacity(Self.size)
            out.appendLittleEndian(UInt32(bitPattern: fd))
            out.appendLittleEndian(UInt32(bitPattern: resamplefd))
            out.appendLittleEndian(gsi)
            out.appendLittleEndian(flags)
            return out
        }

        /// Decodes the structure from the bytes of an ioctl argument.
        public init(bytes: UnsafeRawBufferPointer) {
            precondition(bytes.count >= Self.size, "struct mshv_user_irqfd is 16 bytes")
            fd = Int32(bitPattern: bytes.littleEndianUInt32(at: Self.offsets.fd))
            resamplefd = Int32(bitPattern: bytes.littleEndianUInt32(at: Self.offsets.resamplefd))
            gsi = bytes.littleEndianUInt32(at: Self.offsets.gsi)
            flags = bytes.littleEndianUInt32(at: Self.offsets.flags)
        }
    }

    /// `struct mshv_user_irq_table` with its `struct mshv_user_irq_entry`
    /// flexible array: an 8-byte header (`nr` at 0, `rsvd` at 4, must be zero)
    /// followed by `nr` entries of 16 bytes (`gsi` at 0, `address_lo` at 4,
    /// `address_hi` at 8, `data` at 12).
    ///
    /// The driver checks, and fails the whole call with EINVAL otherwise:
    /// `nr <= MSHV_MAX_GUEST_IRQS`, `rsvd == 0`, every `gsi < MSHV_MAX_GUEST_IRQS`,
    /// every `address_hi == 0`, and no GSI twice. `nr == 0` empties the table.
    public enum IrqTable {
        /// `offsetof(struct mshv_user_irq_table, entries)`.
        public static let headerSize = 8
        /// `sizeof(struct mshv_user_irq_entry)`.
        public static let entrySize = 16
        /// Byte offsets within one entry.
        public static let entryOffsets = (gsi: 0, addressLow: 4, addressHigh: 8, data: 12)

        /// Bytes of a table of `count` entries.
        public static func size(entries count: Int) -> Int { headerSize + entrySize * count }

        /// Writes the table for `entries` into `buffer`, which must hold
        /// `size(entries: entries.count)` bytes.
        public static func encode(_ entries: [RoutingEntry], into buffer: UnsafeMutableRawBufferPointer) {
            precondition(buffer.count >= size(entries: entries.count), "routing buffer too small")
            buffer.storeLittleEndian(UInt32(entries.count), at: 0)
            buffer.storeLittleEndian(0, at: 4)
            for (index, entry) in entries.enumerated() {
                let base = headerSize + index * entrySize
                buffer.storeLittleEndian(entry.gsi, at: base + entryOffsets.gsi)
                buffer.storeLittleEndian(
                    UInt32(truncatingIfNeeded: entry.msi.address), at: base + entryOffsets.addressLow)
                buffer.storeLittleEndian(
                    UInt32(truncatingIfNeeded: entry.msi.address >> 32), at: base + entryOffsets.addressHigh)
                buffer.storeLittleEndian(entry.msi.data, at: base + entryOffsets.data)
            }
        }

        /// The table for `entries` as bytes.
        public static func bytes(_ entries: [RoutingEntry]) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: size(entries: entries.count))
            out.withUnsafeMutableBytes { encode(entries, into: $0) }
            return out
        }

        /// Reads a table back from an ioctl argument: the header's `nr` and
        /// `rsvd` and then `nr` entries. For recording interfaces and tests.
        public static func decode(_ bytes: UnsafeRawBufferPointer) -> (reserved: UInt32, entries: [RoutingEntry]) {
            precondition(bytes.count >= headerSize, "a routing table has an 8-byte header")
            let count = Int(bytes.littleEndianUInt32(at: 0))
            precondition(
                bytes.count >= size(entries: count),
                "a routing table of \(count) entries needs \(size(entries: count)) bytes")
            let entries = (0..<count).map { index -> RoutingEntry in
                let base = headerSize + index * entrySize
                let low = UInt64(bytes.littleEndianUInt32(at: base + entryOffsets.addressLow))
                let high = UInt64(bytes.littleEndianUInt32(at: base + entryOffsets.addressHigh))
                return RoutingEntry(
                    gsi: bytes.littleEndianUInt32(at: base + entryOffsets.gsi),
                    msi: MsiMessage(
                        address: high << 32 | low, data: bytes.littleEndianUInt32(at: base + entryOffsets.data)))
            }
            return (bytes.littleEndianUInt32(at: 4), entries)
        }
    }

    /// `struct mshv_create_partition`, 16 bytes: `pt_flags` at 0 (u64, bits
    /// `1 << MSHV_PT_BIT_*`), `pt_isolation` at 8 (u64, `MSHV_PT_ISOLATION_*`).
    public struct CreatePartition: Hashable, Sendable {
        /// `sizeof(struct mshv_create_partition)`.
        public static let size = 16
        /// `1 << MSHV_PT_BIT_LAPIC`: the partition has local APICs.
        public static let flagLAPIC: UInt64 = 1 << 0
        /// `1 << MSHV_PT_BIT_X2APIC`: the local APICs support x2APIC mode.
        public static let flagX2APIC: UInt64 = 1 << 1
        /// `1 << MSHV_PT_BIT_GPA_SUPER_PAGES`: back guest memory with large pages.
        public static let flagGPASuperPages: UInt64 = 1 << 2
        /// `MSHV_PT_ISOLATION_NONE`.
        public static let isolationNone: UInt64 = 0

        /// `1 << MSHV_PT_BIT_*` bits.
        public var flags: UInt64
        /// `MSHV_PT_ISOLATION_*`.
        public var isolation: UInt64

        /// A partition description; by default with LAPIC and x2APIC, no isolation.
        public init(flags: UInt64 = flagLAPIC | flagX2APIC, isolation: UInt64 = isolationNone) {
            self.flags = flags
            self.isolation = isolation
        }

        /// The 16 bytes the kernel copies in.
        public var bytes: [UInt8] {
            var out = [UInt8]()
            out.appendLittleEndian(flags)
            out.appendLittleEndian(isolation)
            return out
        }
    }
}

extension Array where Element == UInt8 {
    fileprivate mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}

extension UnsafeMutableRawBufferPointer {
    fileprivate func storeLittleEndian(_ value: UInt32, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self)
    }
}

extension UnsafeRawBufferPointer {
    fileprivate func littleEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
}
