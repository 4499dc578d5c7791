#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import KVM
import KVMFaultInjection
import MSIX
import PCI
import TestSupport
import Testing
import TinyVM

/// The PCI test device's configuration space on real KVM guests: accesses
/// the bus never makes, Bus Master Enable, save and restore of the writable
/// registers, and byte lanes, with interrupts counted by the guest's own handlers.
@Suite(needsKVM, .serialized) struct PCIConfigurationSpaceTests {
    /// The PCI bus and the test device, called through their host
    /// API with sizes and offsets no CPU makes: ignored, never a trap.
    @Test func pciHostAccessesWithAbsurdArgumentsNeverTrap() throws {
        let vm = try TinyVM()
        let device = try MsixTestDevice.attach(to: vm)
        for size in [0, -1, 3, 5, 8, .max, .min] {
            #expect(vm.pci.read(port: PCIBus.dataPort, size: size) == .max)
            vm.pci.write(port: PCIBus.dataPort, size: size, value: 0)
            #expect(device.read(address: MsixTestDevice.registersBase - 8, size: size) != 0)
            for offset in [Int.max, Int.min, -1, 255, 256, 0x3F, 0x4B] {
                #expect(device.configRead(offset: offset, size: size) == .max || [1, 2, 4].contains(size))
                device.configWrite(offset: offset, size: size, value: .max)
            }
        }
        #expect(device.configRead(offset: .max, size: 1) == .max)
        #expect(device.configRead(offset: 0x3F, size: 2) == .max, "crosses into the next DWORD")
        #expect(device.configRead(offset: 0x4B, size: 2) == .max, "from the capability's last byte into the next DWORD")
        #expect(device.configRead(offset: 0, size: 4) == MsixTestDevice.id)
        #expect(device.emulator.counters.badAccesses == 0, "the device filtered them all: \(device.emulator.counters)")
    }

    /// With Bus Master Enable clear the device sends no MSI-X; the
    /// interrupt is held as pending and delivered once when the guest sets it again.
    @Test(arguments: InterruptDelivery.allCases)
    func busMasterEnableClearStopsMsixUntilItIsSetAgain(delivery: InterruptDelivery) throws {
        let g = try DeviceGuest(delivery: delivery)
        let guest = g.guest
        #expect(try g.ringLive(entry: 2, vector: 0x42))
        try guest.configWrite(offset: 0x04, size: 2, 0x0002)  // memory space on, bus mastering off
        #expect(!g.device.emulator.isBusMasterEnabled)
        try guest.ring(2)
        try guest.ring(2)
        g.settle()
        #expect(try guest.signaled() == 3)
        #expect(guest.count(vector: 0x42) == 1, "\(delivery): no MSI-X while bus mastering is off")
        #expect(try guest.readPBA() == 1 << 2, "\(delivery): held as pending")
        try guest.configWrite(offset: 0x04, size: 2, 0x0006)
        #expect(guest.waitForCount(vector: 0x42, atLeast: 2), "\(delivery): delivered when bus mastering is back")
        g.settle()
        #expect(guest.count(vector: 0x42) == 2, "\(delivery): two held signals, one pending interrupt")
        #expect(try guest.readPBA() == 0)
        try guest.ring(2)
        #expect(guest.waitForCount(vector: 0x42, atLeast: 3), "\(delivery): live again")
        g.finish()
    }

    /// Save/restore keeps every writable configuration register.
    @Test func saveAndRestoreKeepTheConfigurationRegisters() throws {
        let source = try TinyVM()
        let device = try MsixTestDevice.attach(to: source)
        device.configWrite(offset: 0x3C, size: 1, value: 0x0B)
        device.configWrite(offset: 0x10, size: 4, value: 0xFFFF_FFFF)  // BAR sizing in progress
        device.configWrite(offset: 0x14, size: 4, value: 0)  // BAR1 unassigned
        device.configWrite(offset: 0x04, size: 2, value: 0x0402)  // INTx disable, bus mastering off
        let saved = device.save()

        let target = try TinyVM()
        let restored = try MsixTestDevice.attach(to: target)
        try restored.restore(saved)
        #expect(restored.configRead(offset: 0x3C, size: 1) == 0x0B, "Interrupt Line")
        #expect(restored.configRead(offset: 0x10, size: 4) == 0xFFFF_F000, "BAR0 (sizing)")
        #expect(restored.configRead(offset: 0x14, size: 4) == 0, "BAR1")
        #expect(restored.configRead(offset: 0x04, size: 2) == 0x0402, "command")
        #expect(!restored.emulator.isBusMasterEnabled, "the emulator is told the restored bus mastering")
        #expect(restored.read(address: MsixTestDevice.msixBase + 12, size: 4) == 0xFFFF_FFFF, "BAR1 does not decode")
    }

    /// A 2-byte capability read at offset 1 and byte writes to the
    /// command register, made by the guest through 0xCF8/0xCFC.
    @Test func configurationByteLanesWorkInTheCapabilityAndTheCommandRegister() throws {
        let g = try DeviceGuest(delivery: .irqfd)
        let guest = g.guest
        #expect(try guest.configRead(offset: 0x41, size: 2) == 0x0700, "next pointer 0, table size 7")
        #expect(
            try guest.configRead(offset: 0x01, size: 2) == 0x4953,
            "the rest of configuration space agrees (bytes 1-2 of the ID)")
        try guest.configWrite(offset: 0x04, size: 1, 0x04)  // memory space off by a byte write
        #expect(try guest.configRead(offset: 0x04, size: 2) == 0x0004)
        #expect(try guest.read32(MsixTestDevice.registersBase) == 0xFFFF_FFFF, "BAR0 stops decoding")
        try guest.configWrite(offset: 0x05, size: 1, 0x04)  // INTx disable: bit 10, in the high byte
        #expect(try guest.configRead(offset: 0x04, size: 2) == 0x0404)
        try guest.configWrite(offset: 0x04, size: 1, 0x06)
        #expect(try guest.configRead(offset: 0x04, size: 4) & 0xFFFF == 0x0406)
        #expect(try guest.read32(MsixTestDevice.registersBase) == MsixTestDevice.id, "BAR0 decodes again")
        try guest.configWrite(offset: 0x43, size: 1, 0x80)  // MSI-X enable by a byte write
        #expect(g.device.emulator.isEnabled)
        #expect(try guest.configRead(offset: 0x41, size: 2) == 0x0700)
        g.finish()
    }
}
#endif
