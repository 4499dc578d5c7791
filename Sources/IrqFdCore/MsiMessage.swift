/// An x86 MSI: the address/data pair a device writes, and its decoded fields
/// (Intel SDM vol. 3, "Message Signalled Interrupts").
public struct MsiMessage: Hashable, Sendable, CustomStringConvertible {
    /// The MSI address (0xFEExxxxx on x86).
    public var address: UInt64
    /// The MSI data (vector, delivery and trigger mode).
    public var data: UInt32

    /// Wraps a raw address/data pair without checking it; see `isDeliverable`.
    public init(address: UInt64, data: UInt32) {
        self.address = address
        self.data = data
    }

    /// Encodes a message for `destination` (APIC ID; IDs above 255 use the
    /// extended destination ID bits 11:5 of the address) and `vector`.
    public init(
        destination: UInt32, vector: UInt8, deliveryMode: DeliveryMode = .fixed,
        destinationMode: DestinationMode = .physical, triggerMode: TriggerMode = .edge,
        redirectionHint: Bool = false
    ) {
        precondition(destination < 1 << 15, "an MSI destination ID has 15 bits")
        var address: UInt64 = Self.addressBase
        address |= UInt64(destination & 0xFF) << 12
        address |= UInt64(destination >> 8) << 5
        if redirectionHint { address |= 1 << 3 }
        if destinationMode == .logical { address |= 1 << 2 }
        var data = UInt32(vector) | UInt32(deliveryMode.rawValue) << 8
        if triggerMode == .level { data |= 1 << 15 | 1 << 14 }
        self.init(address: address, data: data)
    }

    /// The fixed top of every x86 MSI address.
    public static let addressBase: UInt64 = 0xFEE0_0000

    /// Whether an x86 platform delivers this address: 0xFEExxxxx, upper 32 bits zero.
    public var isDeliverable: Bool { address & 0xFFFF_FFFF_FFF0_0000 == Self.addressBase }

    /// Throws `undeliverableAddress` unless `isDeliverable`.
    public func validate() throws(IrqFdError) {
        guard isDeliverable else { throw .undeliverableAddress(address) }
    }

    /// The destination APIC ID: address bits 19:12, extended by bits 11:5 (the
    /// "extended destination ID" that KVM and Hyper-V use for IDs above 255).
    public var destinationID: UInt32 {
        UInt32((address >> 12) & 0xFF) | UInt32((address >> 5) & 0x7F) << 8
    }
    /// The interrupt vector (data bits 7:0).
    public var vector: UInt8 { UInt8(truncatingIfNeeded: data) }
    /// Data bits 10:8.
    public var deliveryMode: DeliveryMode { DeliveryMode(rawValue: UInt8((data >> 8) & 7))! }
    /// Data bit 15.
    public var triggerMode: TriggerMode { data & (1 << 15) != 0 ? .level : .edge }
    /// Data bit 14 (meaningful for level-triggered messages).
    public var levelAsserted: Bool { data & (1 << 14) != 0 }
    /// Address bit 2.
    public var destinationMode: DestinationMode { address & (1 << 2) != 0 ? .logical : .physical }
    /// Address bit 3.
    public var redirectionHint: Bool { address & (1 << 3) != 0 }

    /// How the APIC delivers the interrupt.
    public enum DeliveryMode: UInt8, Sendable, CaseIterable {
        /// Deliver `vector` to the destination.
        case fixed = 0
        /// Deliver to the lowest-priority processor among the destinations.
        case lowestPriority = 1
        /// System management interrupt.
        case smi = 2
        /// Reserved encoding 3.
        case reserved3 = 3
        /// Non-maskable interrupt.
        case nmi = 4
        /// INIT.
        case initialize = 5
        /// Reserved encoding 6.
        case reserved6 = 6
        /// External interrupt (8259-compatible).
        case extINT = 7
    }

    /// Whether the destination is an APIC ID or a logical set.
    public enum DestinationMode: Sendable {
        /// Destination is one APIC ID.
        case physical
        /// Destination is a logical APIC ID set.
        case logical
    }

    /// Edge- or level-triggered.
    public enum TriggerMode: Sendable {
        /// Edge-triggered (the usual for MSI).
        case edge
        /// Level-triggered.
        case level
    }

    public var description: String {
        "MSI(addr 0x\(String(address, radix: 16)) data 0x\(String(data, radix: 16)): vector \(vector) -> APIC \(destinationID)"
            + (destinationMode == .logical ? " (logical)" : "") + (deliveryMode == .fixed ? "" : " \(deliveryMode)")
    }
}
