#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import KVM
import KVMFaultInjection
import MSIX
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// Issue 13, items 5 to 12, on real KVM guests: the MSI-X emulator and the
/// PCI test device, with interrupts counted by the guest's own handlers.
@Suite(needsKVM, .serialized) struct PCIReviewTests {
    /// Item 6: a retarget whose push fails, and whose `mask` (leaving the
    /// vector not live) fails too, leaves the route armed. Before the fix the
    /// vector was marked not live anyway, so the guest's next mask made no
    /// call and the device's signal was delivered while masked.
    @Test func aFailedMaskAfterAFailedRetargetStillMasksOnTheGuestsNextMask() throws {
        let guest = try CountingGuest()
        let emulator = MsixEmulator(layout: MsixLayout(vectorCount: 4)!, delivery: .irqfd(guest.irqfd))
        let first = message(0x61), second = message(0x62)
        emulator.writeCapability(offset: 2, size: 2, value: 0x8000)
        emulator.writeTable(offset: 0, size: 4, value: first.address & 0xFFFF_FFFF)
        emulator.writeTable(offset: 8, size: 4, value: UInt64(first.data))
        emulator.writeTable(offset: 12, size: 4, value: 0)
        emulator.signal(vector: 0)
        #expect(guest.waitFor(cpu: 0, vector: 0x61, count: 1))

        // The retarget's KVM_SET_GSI_ROUTING fails, then the KVM_IRQFD deassign of the mask after it.
        guest.vm.vm.faults.failCall(nil, count: 2)
        emulator.writeTable(offset: 8, size: 4, value: UInt64(second.data))
        guest.vm.vm.faults.clear()
        #expect(emulator.lastRouteError != nil)
        #expect(emulator.isLive(0), "the route is still armed: the vector is live as far as it knows")

        emulator.writeTable(offset: 12, size: 4, value: 1)  // the guest masks the entry
        #expect(!emulator.isLive(0))
        let total = guest.total
        emulator.signal(vector: 0)
        guest.settle()
        #expect(guest.total == total, "nothing delivered while masked")
        #expect(emulator.isPending(0))
        emulator.writeTable(offset: 12, size: 4, value: 0)
        #expect(guest.waitFor(cpu: 0, vector: 0x62, count: 1), "unmask retries setMsi and delivers the pending one")
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x62) == 1 && guest.count(cpu: 0, vector: 0x61) == 1)
        guest.expectAlive()
    }

    /// Item 7: a restore whose saved pending bit belongs to a vector live
    /// before and after it delivers that interrupt, on KVM.
    @Test func restoreDeliversThePendingBitOfAVectorThatStaysLive() throws {
        let guest = try CountingGuest()
        let emulator = MsixEmulator(layout: MsixLayout(vectorCount: 4)!, delivery: .irqfd(guest.irqfd))
        let msi = message(0x63, cpu: 1)
        emulator.writeCapability(offset: 2, size: 2, value: 0x8000)
        emulator.writeTable(offset: 16, size: 4, value: msi.address & 0xFFFF_FFFF)
        emulator.writeTable(offset: 16 + 8, size: 4, value: UInt64(msi.data))
        emulator.writeTable(offset: 16 + 12, size: 4, value: 0)
        var saved = emulator.save()
        saved.pendingBits[0] |= 1 << 1
        try emulator.restore(saved)
        #expect(guest.waitFor(cpu: 1, vector: 0x63, count: 1), "the saved pending interrupt is delivered")
        guest.settle()
        #expect(guest.count(cpu: 1, vector: 0x63) == 1)
        #expect(!emulator.isPending(1))
        emulator.signal(vector: 1)
        #expect(guest.waitFor(cpu: 1, vector: 0x63, count: 2), "and the vector is still live")
    }

    /// Item 8: the PCI bus and the test device, called through their host
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

    /// Item 9: with Bus Master Enable clear the device sends no MSI-X; the
    /// interrupt is held as pending and delivered once when the guest sets it again.
    @Test(arguments: InterruptDelivery.allCases)
    func busMasterEnableClearStopsMsixUntilItIsSetAgain(delivery: InterruptDelivery) throws {
        let g = try DeviceGuest(delivery: delivery)
        let guest = g.guest
        try guest.setMsix(enabled: true)
        try guest.program(2, message(0x42), masked: false)
        try guest.ring(2)
        #expect(guest.waitForCount(vector: 0x42, atLeast: 1))
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

    /// Item 10: save/restore keeps every writable configuration register.
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

    /// Item 11: a 2-byte capability read at offset 1 and byte writes to the
    /// command register, made by the guest through 0xCF8/0xCFC.
    @Test func configurationByteLanesWorkInTheCapabilityAndTheCommandRegister() throws {
        let g = try DeviceGuest(delivery: .irqfd)
        let guest = g.guest
        #expect(try guest.configRead(offset: 0x41, size: 2) == 0x0700, "next pointer 0, table size 7")
        #expect(try guest.configRead(offset: 0x01, size: 2) == 0x4953, "the rest of configuration space agrees (bytes 1-2 of the ID)")
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

    /// Item 12: an eventfd handed to another process outlives a reset of the
    /// MSI-X function: it stays the vector's event, a signal from that process
    /// after the reset pends, and it delivers once the driver programs the vector again.
    @Test func anEventHeldByAnotherProcessOutlivesAReset() throws {
        let helper = try builtExecutable("irqfd-device-helper")
        let g = try DeviceGuest(delivery: .irqfd)
        let guest = g.guest
        try guest.setMsix(enabled: true)
        try guest.program(3, message(0x45), masked: false)
        let eventFD = try #require(try g.device.emulator.event(for: 3) as? EventFD)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("irqfd-reset-\(getpid()).sock").path
        let listener = try UnixSocket.listen(at: path)
        defer { unlink(path) }
        let process = Process()
        process.executableURL = helper
        process.arguments = ["--socket", path]
        try process.run()
        let connection = try listener.accept()
        try connection.send(Array("E".utf8), passing: eventFD.fileDescriptor)
        #expect(try connection.receive(maximum: 1) == Array("R".utf8))
        func signalFromTheOtherProcess() throws {
            try connection.send(Array("s".utf8))
            #expect(try connection.receive(maximum: 1) == Array("k".utf8))
        }
        try signalFromTheOtherProcess()
        #expect(guest.waitForCount(vector: 0x45, atLeast: 1))

        g.device.emulator.reset()
        let after = try #require(try g.device.emulator.event(for: 3) as? EventFD)
        #expect(after === eventFD && after.fileDescriptor == eventFD.fileDescriptor, "the same event after the reset")
        #expect(fcntl(eventFD.fileDescriptor.rawValue, F_GETFD) >= 0, "still open")
        try signalFromTheOtherProcess()  // the vector is masked after the reset: it pends
        g.settle()
        #expect(try guest.readPBA() == 1 << 3)
        #expect(guest.count(vector: 0x45) == 1)

        try guest.setMsix(enabled: true)
        try guest.program(3, message(0x46), masked: false)
        #expect(guest.waitForCount(vector: 0x46, atLeast: 1), "the pending signal arrives on the new message")
        try signalFromTheOtherProcess()
        #expect(guest.waitForCount(vector: 0x46, atLeast: 2), "the other process's event delivers after the reset")
        g.settle()
        #expect(guest.count(vector: 0x46) == 2 && guest.count(vector: 0x45) == 1)

        try connection.send(Array("q".utf8))
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        g.finish()
    }
}
#endif
