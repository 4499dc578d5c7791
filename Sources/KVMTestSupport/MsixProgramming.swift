public import IrqFdCore
public import MSIX

/// The emulator's registers written as a guest driver writes them: table
/// entries a dword at a time and Message Control a word at a time (PCI Local
/// Bus 3.0 section 6.8.2: the MSI-X capability and table).
extension MsixEmulator {
    /// Writes `message` into table entry `v`: Message Address, Message Upper Address, Message Data.
    public func program(_ v: Int, _ message: MsiMessage) {
        writeTable(offset: UInt64(16 * v), size: 4, value: message.address & 0xFFFF_FFFF)
        writeTable(offset: UInt64(16 * v + 4), size: 4, value: message.address >> 32)
        writeTable(offset: UInt64(16 * v + 8), size: 4, value: UInt64(message.data))
    }

    /// Sets or clears table entry `v`'s Mask bit (Vector Control).
    public func setMasked(_ v: Int, _ masked: Bool) {
        writeTable(offset: UInt64(16 * v + 12), size: 4, value: masked ? 1 : 0)
    }

    /// Writes Message Control's MSI-X Enable and Function Mask bits.
    public func control(enabled: Bool, functionMasked: Bool) {
        writeCapability(offset: 2, size: 2, value: (enabled ? 0x8000 : 0) | (functionMasked ? 0x4000 : 0))
    }
}
