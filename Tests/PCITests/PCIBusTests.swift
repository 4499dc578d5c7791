import PCI
import Synchronization
import Testing

/// A configuration space that records what reached it.
final class RecordingFunction: PCIFunction {
    let accesses = Mutex<[String]>([])
    func configRead(offset: Int, size: Int) -> UInt32 {
        accesses.withLock { $0.append("read \(offset)/\(size)") }
        return 0x1234_5678 >> (8 * UInt32(offset & 3))
    }
    func configWrite(offset: Int, size: Int, value: UInt32) {
        accesses.withLock { $0.append("write \(offset)/\(size) = 0x\(String(value, radix: 16))") }
    }
    /// No BARs: the bus under test routes configuration cycles only.
    var memoryWindows: [Range<UInt64>] { [] }
    func read(address: UInt64, size: Int) -> UInt64 {
        accesses.withLock { $0.append("memory read 0x\(String(address, radix: 16))/\(size)") }
        return .max
    }
    func write(address: UInt64, size: Int, value: UInt64) {
        accesses.withLock { $0.append("memory write 0x\(String(address, radix: 16))/\(size)") }
    }
}

/// Configuration mechanism #1 without a VM: the port protocol only.
@Suite struct PCIBusTests {
    let bus = PCIBus()
    let function = RecordingFunction()
    init() { bus.plug(function, device: 1) }

    @Test func configAddressSelectsRegisterAndBytes() {
        bus.write(port: 0xCF8, size: 4, value: PCIBus.configAddress(device: 1, offset: 0x40))
        #expect(bus.read(port: 0xCF8, size: 4) == 0x8000_0840)
        #expect(bus.read(port: 0xCFC, size: 4) == 0x1234_5678)
        #expect(bus.read(port: 0xCFE, size: 2) == 0x1234)
        bus.write(port: 0xCFF, size: 1, value: 0x80)
        #expect(function.accesses.withLock { $0 } == ["read 64/4", "read 66/2", "write 67/1 = 0x80"])
    }

    @Test func whatSelectsNothingReadsAllOnesAndWritesNowhere() {
        bus.write(port: 0xCF8, size: 4, value: PCIBus.configAddress(device: 2, offset: 0))
        #expect(bus.read(port: 0xCFC, size: 4) == 0xFFFF_FFFF, "empty slot")
        bus.write(port: 0xCF8, size: 4, value: PCIBus.configAddress(device: 1, offset: 0) & ~(1 << 31))
        #expect(bus.read(port: 0xCFC, size: 2) == 0xFFFF, "enable bit clear")
        bus.write(port: 0xCF8, size: 4, value: PCIBus.configAddress(device: 1, offset: 0) | 1 << 16)
        #expect(bus.read(port: 0xCFC, size: 1) == 0xFF, "bus 1 does not exist")
        bus.write(port: 0xCF8, size: 4, value: PCIBus.configAddress(device: 1, offset: 0))
        #expect(bus.read(port: 0xCFD, size: 4) == 0xFFFF_FFFF, "a DWORD cannot straddle registers")
        bus.write(port: 0xCFE, size: 4, value: 0)
        bus.write(port: 0xCF9, size: 1, value: 6)  // another chipset register, not CONFIG_ADDRESS
        #expect(bus.read(port: 0xCF8, size: 4) == 0x8000_0800)
        bus.write(port: 0xCF8, size: 4, value: 0xFFFF_FFFF)
        #expect(bus.read(port: 0xCF8, size: 4) == 0x80FF_FFFC, "reserved and low bits read as zero")
        #expect(function.accesses.withLock { $0 }.isEmpty)
    }
}
