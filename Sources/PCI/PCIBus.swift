import Synchronization

/// PCI bus 0 behind configuration mechanism #1 (PCI Local Bus spec 3.2.2.3.2):
/// a DWORD written to CONFIG_ADDRESS (port 0xCF8) selects enable (bit 31),
/// bus (23:16), device (15:11), function (10:8) and register (7:2); CONFIG_DATA
/// (ports 0xCFC-0xCFF) then reads or writes that register's bytes.
///
/// Only bus 0 exists. A slot with no function reads as all ones (so probing
/// software sees vendor ID 0xFFFF) and ignores writes. A VMM sends the I/O
/// exits for ``ports`` to ``read(port:size:)`` and ``write(port:size:value:)``.
public final class PCIBus: Sendable {
    /// CONFIG_ADDRESS.
    public static let addressPort: UInt16 = 0xCF8
    /// CONFIG_DATA (the first of its four byte ports).
    public static let dataPort: UInt16 = 0xCFC
    /// The ports the bus decodes.
    public static let ports: ClosedRange<UInt16> = 0xCF8...0xCFF

    /// One latch per machine, as on a real chipset: guests serialise their
    /// configuration cycles themselves (Linux holds pci_config_lock).
    private let address = Atomic<UInt32>(0)
    private let functions = Mutex<[Int: any PCIFunction]>([:])

    /// An empty bus 0.
    public init() {}

    /// Puts `function` at 00:`device`.`function`, replacing what was there.
    public func plug(_ pciFunction: any PCIFunction, device: Int, function: Int = 0) {
        precondition((0..<32).contains(device) && (0..<8).contains(function), "no such PCI slot \(device).\(function)")
        functions.withLock { $0[device << 3 | function] = pciFunction }
    }

    /// The function at 00:`device`.`function`, if any.
    public func function(device: Int, function: Int = 0) -> (any PCIFunction)? {
        functions.withLock { $0[device << 3 | function] }
    }

    /// The CONFIG_ADDRESS value that selects 00:`device`.`function`, register `offset`.
    public static func configAddress(device: Int, function: Int = 0, offset: Int) -> UInt32 {
        1 << 31 | UInt32(device) << 11 | UInt32(function) << 8 | UInt32(offset & 0xFC)
    }

    /// The function and register CONFIG_ADDRESS selects, if it selects one on bus 0.
    private func selected() -> (function: any PCIFunction, register: Int)? {
        let a = address.load(ordering: .acquiring)
        guard a & 1 << 31 != 0, (a >> 16) & 0xFF == 0 else { return nil }
        guard let f = functions.withLock({ $0[Int((a >> 8) & 0xFF)] }) else { return nil }
        return (f, Int(a & 0xFC))
    }

    /// Whether `size` is an I/O access size (1, 2 or 4 bytes). Anything else
    /// (possible only through this API, never from KVM) is ignored: a read
    /// gives all ones, a write does nothing; no shift below can trap.
    private static func isAccessSize(_ size: Int) -> Bool { size == 1 || size == 2 || size == 4 }

    /// IN from CONFIG_ADDRESS (DWORD) or CONFIG_DATA.
    public func read(port: UInt16, size: Int) -> UInt32 {
        guard Self.isAccessSize(size) else { return .max }
        let ones: UInt32 = size == 4 ? .max : (1 << (8 * UInt32(size))) - 1
        if port == Self.addressPort {
            return size == 4 ? address.load(ordering: .acquiring) : ones
        }
        guard port >= Self.dataPort else { return ones }
        let byte = Int(port - Self.dataPort)
        guard byte + size <= 4, let (function, register) = selected() else { return ones }
        return function.configRead(offset: register + byte, size: size)
    }

    /// OUT to CONFIG_ADDRESS (DWORD) or CONFIG_DATA.
    public func write(port: UInt16, size: Int, value: UInt32) {
        guard Self.isAccessSize(size) else { return }
        if port == Self.addressPort {
            // Bits 1:0 are read-only zero, 30:24 reserved. Narrower writes to
            // 0xCF8-0xCFB are other chipset registers, not CONFIG_ADDRESS.
            if size == 4 { address.store(value & 0x80FF_FFFC, ordering: .releasing) }
            return
        }
        guard port >= Self.dataPort else { return }
        let byte = Int(port - Self.dataPort)
        guard byte + size <= 4, let (function, register) = selected() else { return }
        function.configWrite(offset: register + byte, size: size, value: value)
    }
}
