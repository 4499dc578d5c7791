#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import KVMTestSupport
import KVM
import KVMFaultInjection
import MSIX
import PCI
import TestSupport
import Testing
import TinyVM

/// The MSI-X emulator on real KVM guests, past failures and resets: a mask
/// after a failed retarget, a restored pending bit, and an event another
/// process holds across a reset, with interrupts counted by the guest's own handlers.
@Suite(needsKVM, .serialized) struct PCIMsixEmulatorOnKVMTests {
    /// A retarget whose push fails, and whose `mask` (leaving the
    /// vector not live) fails too, leaves the route armed, and the vector
    /// live as far as the emulator knows: were it marked not live, the
    /// guest's next mask would make no call and the device's signal would be
    /// delivered while masked.
    @Test func aFailedMaskAfterAFailedRetargetStillMasksOnTheGuestsNextMask() throws {
        let guest = try CountingGuest()
        let emulator = MsixEmulator(layout: MsixLayout(vectorCount: 4)!, delivery: .irqfd(guest.irqfd))
        let first = message(0x61)
        let second = message(0x62)
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

    /// A restore whose saved pending bit belongs to a vector live
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

    /// An eventfd handed to another process outlives a reset of the
    /// MSI-X function: it stays the vector's event, a signal from that process
    /// after the reset pends, and it delivers once the driver programs the vector again.
    @Test func anEventHeldByAnotherProcessOutlivesAReset() throws {
        let g = try DeviceGuest(delivery: .irqfd)
        let guest = g.guest
        try g.enable(entry: 3, vector: 0x45)
        let eventFD = try #require(try g.device.emulator.event(for: 3) as? EventFD)
        let holder = try EventHolderProcess(holding: eventFD, socketName: "irqfd-reset")
        try holder.signal()
        #expect(guest.waitForCount(vector: 0x45, atLeast: 1))

        g.device.emulator.reset()
        let after = try #require(try g.device.emulator.event(for: 3) as? EventFD)
        #expect(after === eventFD && after.fileDescriptor == eventFD.fileDescriptor, "the same event after the reset")
        #expect(fcntl(eventFD.fileDescriptor.rawValue, F_GETFD) >= 0, "still open")
        try holder.signal()  // the vector is masked after the reset: it pends
        g.settle()
        #expect(try guest.readPBA() == 1 << 3)
        #expect(guest.count(vector: 0x45) == 1)

        try guest.setMsix(enabled: true)
        try guest.program(3, message(0x46), masked: false)
        #expect(guest.waitForCount(vector: 0x46, atLeast: 1), "the pending signal arrives on the new message")
        try holder.signal()
        #expect(guest.waitForCount(vector: 0x46, atLeast: 2), "the other process's event delivers after the reset")
        g.settle()
        #expect(guest.count(vector: 0x46) == 2 && guest.count(vector: 0x45) == 1)

        try holder.quit()
        g.finish()
    }
}
#endif
