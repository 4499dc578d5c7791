#if os(Linux)
import MSIX
import TestSupport
import Testing
import TinyVM
import Virtio

/// The virtio device obeys PCI's Bus Master Enable like the test device: a
/// Command write (any byte lanes) reaches the MSI-X emulator, which holds
/// interrupts as pending while bus mastering is off.
@Suite(needsKVM) struct VirtioBusMasterTests {
    @Test func aByteWriteToCommandClearingBusMasterStopsMsixAndSettingItRestores() throws {
        let image = try TestImage(sectors: 8)
        let guest = try BlkGuest(.embedded, image: image)
        #expect(guest.device.emulator.isBusMasterEnabled, "bus mastering is on at start")
        guest.device.configWrite(offset: 0x04, size: 1, value: 0x02)  // memory decoding only
        #expect(!guest.device.emulator.isBusMasterEnabled)
        #expect(guest.device.configRead(offset: 0x04, size: 2) == 0x0002)
        #expect(guest.device.configRead(offset: 0x06, size: 2) == 0x0010, "Status is read-only")
        guest.device.configWrite(offset: 0x04, size: 2, value: 0x0006)
        #expect(guest.device.emulator.isBusMasterEnabled)
        guest.device.configWrite(offset: 0x05, size: 1, value: 0x04)  // Interrupt Disable lane
        #expect(guest.device.configRead(offset: 0x04, size: 2) == 0x0406)
    }
}
#endif
