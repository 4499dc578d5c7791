public import IrqFdCore

/// How an `MsixEmulator` gets its vectors' interrupts into the guest.
public enum MsixDelivery: Sendable {
    /// One irqfd route per vector that has ever been live, made lazily through
    /// `partition` (KVM, mshv, the relay, ...). `fallback`, if given, delivers
    /// the vectors whose route could not be made (for example, no free GSI).
    case irqfd(any IrqFd, fallback: (any MsiInjector)? = nil)
    /// Every interrupt is injected from userspace through `injector`
    /// (KVM_SIGNAL_MSI here); no routes at all. Masking and pending bits
    /// behave exactly as with irqfd.
    case userspace(any MsiInjector)
}

/// Where a function's MSI-X structures live and how many vectors it has
/// (the read-only parts of the capability, PCI Local Bus spec 6.8.2).
public struct MsixLayout: Hashable, Sendable {
    /// Vectors in the table (1...2048); Message Control's Table Size is this minus one.
    public let vectorCount: Int
    /// The BAR (0...5) that holds the table.
    public let tableBIR: UInt8
    /// The table's offset in that BAR (a multiple of 8).
    public let tableOffset: UInt32
    /// The BAR (0...5) that holds the Pending Bit Array.
    public let pbaBIR: UInt8
    /// The PBA's offset in that BAR (a multiple of 8).
    public let pbaOffset: UInt32
    /// The capability's Next Pointer (0: last in the list).
    public let nextCapability: UInt8

    /// The most vectors MSI-X allows (an 11-bit Table Size field).
    public static let maxVectors = 2048
    /// Bytes per table entry: address low, address high, data, vector control.
    public static let entrySize = 16
    /// The capability's length in configuration space.
    public static let capabilityLength = 12
    /// The MSI-X capability ID.
    public static let capabilityID: UInt8 = 0x11

    /// A layout; returns nil when a field cannot be encoded or the table and
    /// PBA overlap in one BAR.
    public init?(
        vectorCount: Int, tableBIR: UInt8 = 1, tableOffset: UInt32 = 0, pbaBIR: UInt8 = 1,
        pbaOffset: UInt32 = 0x8000, nextCapability: UInt8 = 0
    ) {
        guard (1...Self.maxVectors).contains(vectorCount), tableBIR <= 5, pbaBIR <= 5,
            tableOffset & 7 == 0, pbaOffset & 7 == 0
        else { return nil }
        self.vectorCount = vectorCount
        self.tableBIR = tableBIR
        self.tableOffset = tableOffset
        self.pbaBIR = pbaBIR
        self.pbaOffset = pbaOffset
        self.nextCapability = nextCapability
        if tableBIR == pbaBIR {
            let table = UInt64(tableOffset)..<UInt64(tableOffset) + UInt64(tableSize)
            let pba = UInt64(pbaOffset)..<UInt64(pbaOffset) + UInt64(pbaSize)
            guard !table.overlaps(pba) else { return nil }
        }
    }

    /// Bytes of the table.
    public var tableSize: Int { vectorCount * Self.entrySize }
    /// Bytes of the PBA: one bit per vector, in whole QWORDs.
    public var pbaSize: Int { (vectorCount + 63) / 64 * 8 }
}

/// What the emulator ignored or could not do, by kind. Guest mistakes are
/// counted, never fatal.
public struct MsixCounters: Hashable, Sendable, CustomStringConvertible {
    /// Table or PBA accesses that were not 4 or 8 bytes; capability accesses not 1, 2 or 4.
    public var wrongSize = 0
    /// Accesses not aligned to their size.
    public var misaligned = 0
    /// Accesses outside the table, the PBA or the capability.
    public var outOfRange = 0
    /// Writes to the read-only PBA.
    public var pbaWrites = 0
    /// Writes that set reserved bits (vector control 31:1, address 1:0, Message Control 13:11).
    public var reservedBits = 0
    /// Route operations that failed (`lastRouteError` says which and why).
    public var routeErrors = 0
    /// Interrupts dropped because their message is not deliverable.
    public var undeliverable = 0
    /// Userspace deliveries that failed.
    public var deliveryErrors = 0
    /// Device signals for vectors the table does not have.
    public var badSignals = 0

    /// Every ignored guest access.
    public var badAccesses: Int { wrongSize + misaligned + outOfRange + pbaWrites + reservedBits }

    public var description: String {
        "wrong size \(wrongSize), misaligned \(misaligned), out of range \(outOfRange), PBA writes \(pbaWrites), "
            + "reserved bits \(reservedBits), route errors \(routeErrors), undeliverable \(undeliverable), "
            + "delivery errors \(deliveryErrors), bad signals \(badSignals)"
    }
}

/// A saved MSI-X function: everything the guest programmed plus the pending
/// bits, with signals that were still latched in route events folded in.
public struct MsixSavedState: Hashable, Sendable, Codable {
    /// One table entry as the guest sees it.
    public struct Entry: Hashable, Sendable, Codable {
        /// Message Address (bits 1:0 are zero).
        public var addressLow: UInt32
        /// Message Upper Address.
        public var addressHigh: UInt32
        /// Message Data.
        public var data: UInt32
        /// Vector Control (bit 0: masked).
        public var vectorControl: UInt32

        /// An entry.
        public init(addressLow: UInt32 = 0, addressHigh: UInt32 = 0, data: UInt32 = 0, vectorControl: UInt32 = 1) {
            self.addressLow = addressLow
            self.addressHigh = addressHigh
            self.data = data
            self.vectorControl = vectorControl
        }

        /// The message this entry sends.
        public var message: MsiMessage {
            MsiMessage(address: UInt64(addressHigh) << 32 | UInt64(addressLow), data: data)
        }
        /// Vector Control bit 0.
        public var isMasked: Bool { vectorControl & 1 != 0 }
    }

    /// Message Control bit 15.
    public var enabled: Bool
    /// Message Control bit 14.
    public var functionMasked: Bool
    /// The table, one entry per vector.
    public var entries: [Entry]
    /// The Pending Bit Array, 64 vectors a word.
    public var pendingBits: [UInt64]

    /// A saved state.
    public init(enabled: Bool, functionMasked: Bool, entries: [Entry], pendingBits: [UInt64]) {
        self.enabled = enabled
        self.functionMasked = functionMasked
        self.entries = entries
        self.pendingBits = pendingBits
    }

    /// Whether vector `v`'s pending bit is set (false for a bit the saved PBA does not have).
    public func isPending(_ v: Int) -> Bool {
        guard v >= 0, v / 64 < pendingBits.count else { return false }
        return pendingBits[v / 64] & (1 << UInt64(v % 64)) != 0
    }
}

/// Why a restore failed.
public enum MsixError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The saved function has a different number of vectors.
    case vectorCountMismatch(saved: Int, emulator: Int)
    /// The saved state is malformed (for example, a short PBA).
    case malformedState(String)
    /// The state was restored but a route could not be programmed.
    case routing(IrqFdError)

    public var description: String {
        switch self {
        case .vectorCountMismatch(let saved, let emulator):
            "the saved MSI-X state has \(saved) vectors, this function has \(emulator)"
        case .malformedState(let why): "malformed MSI-X state: \(why)"
        case .routing(let error): "restored, but a route could not be programmed: \(error)"
        }
    }
}
