public import IrqFdCore

/// WHP's `WHV_INTERRUPT_CONTROL` (WinHvPlatformDefs.h, x64): what
/// `WHvRequestInterrupt` and an interrupt trigger (`WHvTriggerTypeInterrupt`)
/// deliver, decoded from an x86 MSI address/data pair.
///
/// Layout (16 bytes): a UINT64 of bit fields — `Type` bits 7:0,
/// `DestinationMode` bits 11:8, `TriggerMode` bits 15:12, the rest reserved
/// (newer headers put `TargetVtl` in bits 23:16; it stays 0, VTL 0) — then
/// UINT32 `Destination` and UINT32 `Vector`.
public struct WHPInterruptControl: Hashable, Sendable, CustomStringConvertible {
    /// `WHV_INTERRUPT_TYPE`.
    public enum InterruptType: UInt8, Sendable {
        /// `WHvX64InterruptTypeFixed`.
        case fixed = 0
        /// `WHvX64InterruptTypeLowestPriority`.
        case lowestPriority = 1
        /// `WHvX64InterruptTypeNmi`.
        case nmi = 4
        /// `WHvX64InterruptTypeInit`.
        case initialize = 5
        /// `WHvX64InterruptTypeSipi`.
        case sipi = 6
        /// `WHvX64InterruptTypeLocalInt1`.
        case localInt1 = 9
    }

    /// `WHV_INTERRUPT_DESTINATION_MODE`.
    public enum DestinationMode: UInt8, Sendable {
        /// `WHvX64InterruptDestinationModePhysical`.
        case physical = 0
        /// `WHvX64InterruptDestinationModeLogical`.
        case logical = 1
    }

    /// `WHV_INTERRUPT_TRIGGER_MODE`.
    public enum TriggerMode: UInt8, Sendable {
        /// `WHvX64InterruptTriggerModeEdge`.
        case edge = 0
        /// `WHvX64InterruptTriggerModeLevel`.
        case level = 1
    }

    /// `Type`.
    public var type: InterruptType
    /// `DestinationMode`.
    public var destinationMode: DestinationMode
    /// `TriggerMode`.
    public var triggerMode: TriggerMode
    /// `Destination`: an APIC ID (physical) or logical destination set.
    public var destination: UInt32
    /// `Vector`.
    public var vector: UInt32

    /// Makes a control from its fields.
    public init(
        type: InterruptType, destinationMode: DestinationMode, triggerMode: TriggerMode, destination: UInt32,
        vector: UInt32
    ) {
        self.type = type
        self.destinationMode = destinationMode
        self.triggerMode = triggerMode
        self.destination = destination
        self.vector = vector
    }

    /// Decodes an MSI the way the APIC would: destination ID (with the
    /// extended bits 11:5, which Hyper-V honours for IDs above 255), vector,
    /// delivery, destination and trigger modes. Throws `undeliverableAddress`
    /// for an address outside 0xFEExxxxx, and `unsupported` for delivery modes
    /// WHP cannot request (SMI, ExtINT, the reserved encodings).
    public init(_ msi: MsiMessage) throws(IrqFdError) {
        try msi.validate()
        switch msi.deliveryMode {
        case .fixed: type = .fixed
        case .lowestPriority: type = .lowestPriority
        case .nmi: type = .nmi
        case .initialize: type = .initialize
        case .smi, .extINT, .reserved3, .reserved6:
            throw .unsupported("WHP cannot deliver an MSI with delivery mode \(msi.deliveryMode)")
        }
        destinationMode = msi.destinationMode == .logical ? .logical : .physical
        triggerMode = msi.triggerMode == .level ? .level : .edge
        destination = msi.destinationID
        vector = UInt32(msi.vector)
    }

    /// The first 8 bytes of the structure: `Type`, `DestinationMode`,
    /// `TriggerMode` bit fields packed into a UINT64.
    public var packedFields: UInt64 {
        UInt64(type.rawValue) | UInt64(destinationMode.rawValue) << 8 | UInt64(triggerMode.rawValue) << 12
    }

    /// The 16 bytes of `WHV_INTERRUPT_CONTROL`, little-endian, as WinHvPlatform reads them.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(16)
        withUnsafeBytes(of: packedFields.littleEndian) { out += $0 }
        withUnsafeBytes(of: destination.littleEndian) { out += $0 }
        withUnsafeBytes(of: vector.littleEndian) { out += $0 }
        return out
    }

    /// The MSI that asks an x86 APIC for the same interrupt (the inverse of
    /// `init(_:)`; used by the KVM model of WHP, whose kernel takes MSIs).
    public var msiMessage: MsiMessage {
        let mode: MsiMessage.DeliveryMode =
            switch type {
            case .fixed: .fixed
            case .lowestPriority: .lowestPriority
            case .nmi: .nmi
            case .initialize: .initialize
            // Neither has an MSI encoding; WHP-only requests never come from an MSI.
            case .sipi, .localInt1: .fixed
            }
        return MsiMessage(
            destination: destination & 0x7FFF, vector: UInt8(truncatingIfNeeded: vector), deliveryMode: mode,
            destinationMode: destinationMode == .logical ? .logical : .physical,
            triggerMode: triggerMode == .level ? .level : .edge)
    }

    public var description: String {
        "WHV_INTERRUPT_CONTROL(type \(type), \(destinationMode), \(triggerMode), destination \(destination), vector \(vector))"
    }
}
