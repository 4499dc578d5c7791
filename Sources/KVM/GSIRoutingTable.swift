#if os(Linux)
import CLinuxKVM

/// A `struct kvm_irq_routing` built by hand (its flexible array does not
/// import): an 8-byte header (u32 nr, u32 flags) and `nr` 48-byte entries
/// (u32 gsi, u32 type, u32 flags, u32 pad, then a 32-byte union; for MSI:
/// u32 address_lo, u32 address_hi, u32 data, u32 devid).
public struct GSIRoutingTable: ~Copyable {
    /// Header bytes (`sizeof(struct kvm_irq_routing)`).
    public static let headerSize = 8
    /// Entry bytes (`sizeof(struct kvm_irq_routing_entry)`).
    public static let entrySize = 48
    let storage: UnsafeMutableRawBufferPointer
    /// Entries written so far.
    public internal(set) var count = 0
    /// Entries the buffer can hold.
    public let capacity: Int

    /// An empty table with room for `capacity` entries.
    public init(capacity: Int) {
        assert(Self.headerSize == IRQFD_SIZEOF_KVM_IRQ_ROUTING && Self.entrySize == IRQFD_SIZEOF_KVM_IRQ_ROUTING_ENTRY)
        self.capacity = capacity
        storage = .allocate(byteCount: Self.headerSize + capacity * Self.entrySize, alignment: 8)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { storage.deallocate() }

    /// Appends an MSI route for `gsi`.
    public mutating func appendMsi(gsi: UInt32, address: UInt64, data: UInt32) {
        let base = beginEntry(gsi: gsi, type: IRQFD_KVM_IRQ_ROUTING_MSI)
        storage.storeBytes(of: UInt32(truncatingIfNeeded: address), toByteOffset: base + 16, as: UInt32.self)
        storage.storeBytes(of: UInt32(truncatingIfNeeded: address >> 32), toByteOffset: base + 20, as: UInt32.self)
        storage.storeBytes(of: data, toByteOffset: base + 24, as: UInt32.self)
    }

    /// Appends a route from `gsi` to pin `pin` of in-kernel irqchip `chip`.
    public mutating func appendIrqchip(gsi: UInt32, chip: Irqchip, pin: UInt32) {
        let base = beginEntry(gsi: gsi, type: IRQFD_KVM_IRQ_ROUTING_IRQCHIP)
        storage.storeBytes(of: chip.rawValue, toByteOffset: base + 16, as: UInt32.self)
        storage.storeBytes(of: pin, toByteOffset: base + 20, as: UInt32.self)
    }

    /// Appends the routes KVM_CREATE_IRQCHIP installs (the kernel's
    /// kvm_setup_default_irq_routing): GSIs 0..<16 to both PICs and the IOAPIC,
    /// 16..<24 to the IOAPIC. Pushing a table without them would cut the IOAPIC off.
    public mutating func appendDefaultIrqchipRoutes() {
        for gsi: UInt32 in 0..<24 {
            if gsi < 16 { appendIrqchip(gsi: gsi, chip: gsi < 8 ? .picMaster : .picSlave, pin: gsi % 8) }
            appendIrqchip(gsi: gsi, chip: .ioapic, pin: gsi)
        }
    }

    /// How many entries `appendDefaultIrqchipRoutes` adds.
    public static let defaultIrqchipRouteCount = 40

    private mutating func beginEntry(gsi: UInt32, type: UInt32) -> Int {
        precondition(count < capacity, "GSI routing table is full")
        let base = Self.headerSize + count * Self.entrySize
        // Clear the entry: the kernel rejects non-zero flags and padding.
        (storage.baseAddress! + base).initializeMemory(as: UInt8.self, repeating: 0, count: Self.entrySize)
        storage.storeBytes(of: gsi, toByteOffset: base, as: UInt32.self)
        storage.storeBytes(of: type, toByteOffset: base + 4, as: UInt32.self)
        count += 1
        storage.storeBytes(of: UInt32(count), toByteOffset: 0, as: UInt32.self)
        return base
    }

    /// Empties the table, keeping its buffer.
    public mutating func removeAll() {
        count = 0
        storage.storeBytes(of: UInt32(0), toByteOffset: 0, as: UInt32.self)
    }

    /// The bytes exactly as KVM_SET_GSI_ROUTING reads them.
    public var bytes: [UInt8] { Array(storage[0..<(Self.headerSize + count * Self.entrySize)]) }

    func withUnsafeBytes<R, E: Error>(_ body: (UnsafeMutableRawPointer) throws(E) -> R) throws(E) -> R {
        try body(storage.baseAddress!)
    }

    /// An in-kernel interrupt controller a route can target.
    public enum Irqchip: UInt32, Sendable {
        /// The master 8259 PIC.
        case picMaster = 0
        /// The slave 8259 PIC.
        case picSlave = 1
        /// The IOAPIC.
        case ioapic = 2
    }
}
#endif
