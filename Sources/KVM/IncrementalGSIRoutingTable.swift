#if os(Linux)
/// A `struct kvm_irq_routing` kept from push to push, so that a push rewrites
/// only the entries that changed.
///
/// KVM_SET_GSI_ROUTING always takes the whole table (the kernel builds a new
/// one and swaps it in under SRCU), so the kernel's work per push is O(entries)
/// whatever we do. What this type removes is the Swift work: the buffer holds
/// exactly what the kernel holds after the last successful push, a GSI → slot
/// index finds an MSI entry in O(1), and a push applies its changes in place:
/// - set: rewrite the entry's address and data in its slot, or append a new
///   entry at the end;
/// - remove: move the last MSI entry into the freed slot (remove by swap).
///
/// Every change is logged so that `rollback()` restores the buffer byte for
/// byte (same entries in the same slots) when the kernel refuses the push;
/// `commit()` forgets the log once the kernel took it. Entries the kernel does
/// not care about the order of: KVM's `kvm_set_irq_routing` looks each GSI up
/// in its own hash chains.
///
/// The first `fixedCount` entries (the irqchip routes, if kept) are never moved.
public struct IncrementalGSIRoutingTable: ~Copyable {
    /// The encoded table, as KVM_SET_GSI_ROUTING reads it.
    public private(set) var table: GSIRoutingTable
    /// By GSI: the slot of its MSI entry, or -1.
    private var slots: [Int32]
    private var log: [Change] = []
    /// Entries at the start of the table that are not MSI entries (irqchip routes).
    public let fixedCount: Int
    /// Entries written into the buffer so far (appended, rewritten, moved by a
    /// removal, or rebuilt): the Swift encoding work pushes have cost.
    package private(set) var entriesWritten = 0

    /// One applied change, with what undoes it.
    private enum Change {
        case rewrote(slot: Int32, address: UInt64, data: UInt32)
        case appended(gsi: UInt32)
        case removed(gsi: UInt32, slot: Int32, address: UInt64, data: UInt32)
    }

    /// A table with room for `capacity` entries and MSI GSIs below `gsiLimit`,
    /// starting as KVM leaves a VM: KVM's default irqchip routes if
    /// `irqchipRoutes` (KVM_CREATE_IRQCHIP installs them), otherwise empty.
    public init(capacity: Int, gsiLimit: Int, irqchipRoutes: Bool) {
        var table = GSIRoutingTable(capacity: capacity)
        if irqchipRoutes { table.appendDefaultIrqchipRoutes() }
        fixedCount = table.count
        self.table = table
        slots = Array(repeating: -1, count: gsiLimit)
    }

    /// How many MSI entries the table holds.
    public var msiCount: Int { table.count - fixedCount }

    /// The MSI entry for `gsi`, as encoded (address, data), if there is one.
    public func msi(gsi: UInt32) -> (address: UInt64, data: UInt32)? {
        let slot = slots[Int(gsi)]
        guard slot >= 0 else { return nil }
        return read(slot: Int(slot))
    }

    /// Every MSI entry, in slot order.
    public var msiEntries: [(gsi: UInt32, address: UInt64, data: UInt32)] {
        (fixedCount..<table.count).map { slot in
            let (address, data) = read(slot: slot)
            return (gsiAt(slot), address, data)
        }
    }

    /// Sets `gsi`'s MSI entry: rewritten in its slot, or appended.
    public mutating func setMsi(gsi: UInt32, address: UInt64, data: UInt32) {
        let slot = slots[Int(gsi)]
        entriesWritten += 1
        if slot >= 0 {
            let (oldAddress, oldData) = read(slot: Int(slot))
            log.append(.rewrote(slot: slot, address: oldAddress, data: oldData))
            write(slot: Int(slot), address: address, data: data)
        } else {
            slots[Int(gsi)] = Int32(table.count)
            table.appendMsi(gsi: gsi, address: address, data: data)
            log.append(.appended(gsi: gsi))
        }
    }

    /// Removes `gsi`'s MSI entry (if any) by moving the last MSI entry into its slot.
    public mutating func removeMsi(gsi: UInt32) {
        let slot = slots[Int(gsi)]
        guard slot >= 0 else { return }
        let (address, data) = read(slot: Int(slot))
        log.append(.removed(gsi: gsi, slot: slot, address: address, data: data))
        let last = table.count - 1
        if Int(slot) != last {
            move(from: last, to: Int(slot))
            entriesWritten += 1
        }
        slots[Int(gsi)] = -1
        setCount(last)
    }

    /// Replaces every MSI entry with `entries` (a full push); undone by `rollback()` too.
    public mutating func replaceAll(_ entries: some Sequence<(gsi: UInt32, address: UInt64, data: UInt32)>) {
        var wanted = Set<UInt32>()
        for entry in entries {
            wanted.insert(entry.gsi)
            setMsi(gsi: entry.gsi, address: entry.address, data: entry.data)
        }
        for slot in (fixedCount..<table.count).reversed() where !wanted.contains(gsiAt(slot)) {
            removeMsi(gsi: gsiAt(slot))
        }
    }

    /// The kernel took the table: forget how to undo it.
    public mutating func commit() { log.removeAll(keepingCapacity: true) }

    /// The kernel refused the table: undo every change since the last `commit()`,
    /// newest first, leaving the buffer exactly as it was then.
    public mutating func rollback() {
        while let change = log.popLast() {
            switch change {
            case .rewrote(let slot, let address, let data):
                write(slot: Int(slot), address: address, data: data)
            case .appended(let gsi):
                slots[Int(gsi)] = -1
                setCount(table.count - 1)
            case .removed(let gsi, let slot, let address, let data):
                let end = table.count
                table.appendMsi(gsi: 0, address: 0, data: 0)  // the slot the last entry had
                // The entry that was moved into `slot` goes back to the end.
                if Int(slot) != end { move(from: Int(slot), to: end) }
                overwrite(slot: Int(slot), gsi: gsi, address: address, data: data)
                slots[Int(gsi)] = slot
            }
        }
    }

    // MARK: - Encoding (the layout is GSIRoutingTable's)

    private func offset(_ slot: Int) -> Int { GSIRoutingTable.headerSize + slot * GSIRoutingTable.entrySize }

    private func gsiAt(_ slot: Int) -> UInt32 { table.storage.load(fromByteOffset: offset(slot), as: UInt32.self) }

    private func read(slot: Int) -> (address: UInt64, data: UInt32) {
        let base = offset(slot)
        let low = table.storage.load(fromByteOffset: base + 16, as: UInt32.self)
        let high = table.storage.load(fromByteOffset: base + 20, as: UInt32.self)
        let data = table.storage.load(fromByteOffset: base + 24, as: UInt32.self)
        return (UInt64(high) << 32 | UInt64(low), data)
    }

    private func write(slot: Int, address: UInt64, data: UInt32) {
        let base = offset(slot)
        table.storage.storeBytes(of: UInt32(truncatingIfNeeded: address), toByteOffset: base + 16, as: UInt32.self)
        table.storage.storeBytes(
            of: UInt32(truncatingIfNeeded: address >> 32), toByteOffset: base + 20, as: UInt32.self)
        table.storage.storeBytes(of: data, toByteOffset: base + 24, as: UInt32.self)
    }

    private func overwrite(slot: Int, gsi: UInt32, address: UInt64, data: UInt32) {
        table.storage.storeBytes(of: gsi, toByteOffset: offset(slot), as: UInt32.self)
        write(slot: slot, address: address, data: data)
    }

    /// Copies the entry in slot `from` over slot `to` and re-indexes its GSI.
    private mutating func move(from: Int, to: Int) {
        let gsi = gsiAt(from)
        let (address, data) = read(slot: from)
        overwrite(slot: to, gsi: gsi, address: address, data: data)
        slots[Int(gsi)] = Int32(to)
    }

    private mutating func setCount(_ count: Int) {
        table.count = count
        table.storage.storeBytes(of: UInt32(count), toByteOffset: 0, as: UInt32.self)
    }
}
#endif
