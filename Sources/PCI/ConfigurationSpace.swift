/// A type 0 configuration header (PCI Local Bus spec 3.0, section 6.1) with
/// 32-bit memory BARs and a capability list: the registers every emulated
/// function has, in one place. A function keeps one of these under its own
/// lock, answers configuration reads and writes through it, and decodes its
/// memory windows with ``decode(_:)``.
///
/// What is emulated:
/// - the IDs, revision, class code and subsystem IDs (read-only);
/// - Command: Memory Space (bit 1), Bus Master (bit 2) and Interrupt Disable
///   (bit 10) are writable, the rest read as zero; Status reads Capabilities
///   List (bit 4) and is read-only;
/// - BARs: a ``BAR/Kind/relocatable`` BAR takes the sizing protocol (write all
///   ones, read back the size mask) and decodes only while it holds its
///   assigned address; a ``BAR/Kind/fixed`` one always reads and decodes at
///   its assigned address (a VMM whose guests use the addresses firmware
///   left, without sizing);
/// - Capabilities Pointer and the capability bytes from 0x40; one capability
///   range (MSI-X) can be served elsewhere: ``forwarded(_:size:)`` says when;
/// - Interrupt Line (writable) when the function has one; Interrupt Pin 0.
///
/// Every write changes exactly the bytes it enables (any byte enables within
/// a DWORD are legal, PCI Local Bus spec 3.2.2.3.2).
public struct PCIConfigurationSpace: Sendable, Hashable {
    /// The read-only identity registers.
    public struct Identity: Sendable, Hashable {
        /// Vendor ID (offset 0x00).
        public var vendorID: UInt16
        /// Device ID (0x02).
        public var deviceID: UInt16
        /// Revision ID (0x08).
        public var revision: UInt8
        /// Class code (0x09-0x0B): class << 16 | subclass << 8 | programming interface.
        public var classCode: UInt32
        /// Subsystem Vendor ID (0x2C).
        public var subsystemVendorID: UInt16
        /// Subsystem ID (0x2E).
        public var subsystemID: UInt16

        /// An identity.
        public init(
            vendorID: UInt16, deviceID: UInt16, revision: UInt8, classCode: UInt32, subsystemVendorID: UInt16,
            subsystemID: UInt16
        ) {
            self.vendorID = vendorID
            self.deviceID = deviceID
            self.revision = revision
            self.classCode = classCode
            self.subsystemVendorID = subsystemVendorID
            self.subsystemID = subsystemID
        }
    }

    /// A 32-bit, non-prefetchable memory BAR.
    public struct BAR: Sendable, Hashable {
        /// How the BAR register takes writes.
        public enum Kind: Sendable, Hashable {
            /// Writable: sizing and relocation (it decodes only at `address`).
            case relocatable
            /// Hard-wired to `address`: writes are read-only writes.
            case fixed
        }

        /// Which BAR (0...5): its register is at 0x10 + 4 x index.
        public var index: Int
        /// The guest-physical address firmware assigned (aligned to `size`).
        public var address: UInt64
        /// Its size: a power of two, at least 16 bytes.
        public var size: UInt64
        /// How its register takes writes.
        public var kind: Kind

        /// A BAR; `size` must be a power of two of at least 16 and `address` aligned to it.
        public init(index: Int, address: UInt64, size: UInt64, kind: Kind) {
            precondition((0..<6).contains(index), "BAR \(index) does not exist")
            precondition(size >= 16 && size & (size - 1) == 0 && address % size == 0 && address + size <= 1 << 32)
            self.index = index
            self.address = address
            self.size = size
            self.kind = kind
        }

        /// The window it decodes when assigned.
        public var window: Range<UInt64> { address..<address + size }
    }

    /// The writable Command bits: Memory Space (1), Bus Master (2), Interrupt Disable (10).
    public static let writableCommand: UInt16 = 0x0406
    /// Memory Space Enable.
    public static let memorySpace: UInt16 = 0x0002
    /// Bus Master Enable: with it clear a function sends no MSI or MSI-X.
    public static let busMaster: UInt16 = 0x0004
    /// Where capabilities start.
    public static let capabilitiesStart = 0x40

    /// The identity registers.
    public let identity: Identity
    /// The memory BARs, as assigned.
    public let bars: [BAR]
    /// The capability list's bytes from 0x40 up to 0x100 (the first
    /// capability at 0x40), or empty: no capabilities.
    public let capabilities: [UInt8]
    /// Configuration offsets of a capability another emulator serves (MSI-X).
    public let forwardedRange: Range<Int>?
    /// Whether Interrupt Line (0x3C) is a writable register.
    public let hasInterruptLine: Bool

    /// Command, as last written (only the writable bits).
    public var command: UInt16
    /// Each BAR register's value, in `bars` order.
    public var barValues: [UInt32]
    /// Interrupt Line (0xFF: unknown), when the function has one.
    public var interruptLine: UInt8

    /// A header with memory decoding and bus mastering on, as firmware leaves
    /// a function it assigned. `capabilities` are the bytes from 0x40;
    /// `forwarded` the offsets another emulator serves.
    public init(
        identity: Identity, bars: [BAR], capabilities: [UInt8], forwarded: Range<Int>? = nil,
        hasInterruptLine: Bool
    ) {
        precondition(capabilities.count <= 256 - Self.capabilitiesStart)
        self.identity = identity
        self.bars = bars
        self.capabilities = capabilities
        forwardedRange = forwarded
        self.hasInterruptLine = hasInterruptLine
        command = Self.memorySpace | Self.busMaster
        barValues = bars.map { UInt32($0.address) }
        interruptLine = 0xFF
    }

    /// Whether Bus Master Enable is set.
    public var isBusMasterEnabled: Bool { command & Self.busMaster != 0 }

    /// A configuration access is 1, 2 or 4 bytes inside one DWORD of the
    /// 256-byte header (PCI Local Bus spec 3.2.2.3.2). The bus never makes any
    /// other, but a caller of a function's API can; no arithmetic here
    /// overflows, whatever the offset.
    public static func isAccess(offset: Int, size: Int) -> Bool {
        (size == 1 || size == 2 || size == 4) && offset >= 0 && offset <= 256 - size && offset & 3 + size <= 4
    }

    /// The offset inside the forwarded capability when a (valid) access at
    /// `offset` starts in it: the caller hands it to the capability's emulator.
    public func forwarded(_ offset: Int) -> Int? {
        guard let range = forwardedRange, range.contains(offset) else { return nil }
        return offset - range.lowerBound
    }

    /// The DWORD at `offset` (a multiple of 4).
    private func dword(_ offset: Int) -> UInt32 {
        switch offset {
        case 0x00: return UInt32(identity.deviceID) << 16 | UInt32(identity.vendorID)
        case 0x04: return UInt32(command) | 0x0010 << 16  // Status: Capabilities List
        case 0x08: return identity.classCode << 8 | UInt32(identity.revision)
        case 0x10..<0x28:
            guard let i = bars.firstIndex(where: { 0x10 + 4 * $0.index == offset }) else { return 0 }
            return bars[i].kind == .fixed ? UInt32(bars[i].address) : barValues[i]
        case 0x2C: return UInt32(identity.subsystemID) << 16 | UInt32(identity.subsystemVendorID)
        case 0x34: return capabilities.isEmpty ? 0 : UInt32(Self.capabilitiesStart)
        case 0x3C: return hasInterruptLine ? UInt32(interruptLine) : 0  // Interrupt Pin 0: no INTx
        case Self.capabilitiesStart..<Self.capabilitiesStart + capabilities.count:
            var value: UInt32 = 0
            for i in 0..<4 where offset - Self.capabilitiesStart + i < capabilities.count {
                value |= UInt32(capabilities[offset - Self.capabilitiesStart + i]) << (8 * UInt32(i))
            }
            return value
        default: return 0
        }
    }

    /// A configuration read of a valid access (``isAccess(offset:size:)``)
    /// outside the forwarded capability.
    public func read(offset: Int, size: Int) -> UInt32 {
        let shifted = dword(offset & ~3) >> (8 * UInt32(offset & 3))
        return size == 4 ? shifted : shifted & ((1 << (8 * UInt32(size))) - 1)
    }

    /// A configuration write of a valid access outside the forwarded
    /// capability. Returns false when it enabled no writable byte (a write
    /// to a read-only register); the caller compares ``command`` before and
    /// after to see a change of Bus Master Enable.
    @discardableResult
    public mutating func write(offset: Int, size: Int, value: UInt32) -> Bool {
        let lane = UInt32(8 * (offset & 3))
        let enables: UInt32 = (size == 4 ? UInt32.max : (1 << (8 * UInt32(size))) - 1) << lane
        let incoming = value << lane
        func merge(_ old: UInt32) -> UInt32 { old & ~enables | incoming & enables }
        switch offset & ~3 {
        case 0x04:
            // Command is bytes 0-1; Status (bytes 2-3) is read-only.
            guard enables & 0xFFFF != 0 else { return false }
            command = UInt16(truncatingIfNeeded: merge(UInt32(command))) & Self.writableCommand
            return true
        case 0x10..<0x28:
            guard let i = bars.firstIndex(where: { 0x10 + 4 * $0.index == offset & ~3 }), bars[i].kind == .relocatable
            else { return false }
            barValues[i] = merge(barValues[i]) & ~UInt32(bars[i].size - 1)
            return true
        case 0x3C:
            // Interrupt Line is byte 0; Pin, Min_Gnt and Max_Lat are read-only.
            guard hasInterruptLine, enables & 0xFF != 0 else { return false }
            interruptLine = UInt8(truncatingIfNeeded: merge(UInt32(interruptLine)))
            return true
        default:
            return false
        }
    }

    /// Which BAR a memory access at `address` hits, and where in it, if that
    /// BAR decodes now: Memory Space is on and the BAR holds its assigned address.
    public func decode(_ address: UInt64) -> (bar: Int, offset: UInt64)? {
        guard command & Self.memorySpace != 0 else { return nil }
        for (i, bar) in bars.enumerated() where bar.window.contains(address) {
            guard bar.kind == .fixed || UInt64(barValues[i]) == bar.address else { return nil }
            return (bar.index, address - bar.address)
        }
        return nil
    }

    /// Restores the writable registers (a saved device's): BAR values are
    /// masked to their sizes and fixed BARs keep their addresses.
    public mutating func restore(command: UInt16, barValues: [UInt32], interruptLine: UInt8) {
        self.command = command & Self.writableCommand
        for i in bars.indices where i < barValues.count && bars[i].kind == .relocatable {
            self.barValues[i] = barValues[i] & ~UInt32(bars[i].size - 1)
        }
        self.interruptLine = interruptLine
    }
}
