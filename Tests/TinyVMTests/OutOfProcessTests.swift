#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import KVM
import MSIX
import PCI
import TestSupport
import Testing
import TinyVM

@Suite(needsKVM, .serialized) struct OutOfProcessDeviceTests {
    /// The route's eventfd goes to another process over a Unix socket; that
    /// process signals it and the guest takes the interrupt. The VMM's device
    /// thread never runs and the VMM makes no ioctl while it happens.
    @Test func aDeviceInAnotherProcessRaisesTheInterruptThroughTheRoutesEventfd() throws {
        let g = try DeviceGuest(delivery: .irqfd)
        let guest = g.guest
        try g.enable(entry: 3, vector: 0x45)
        // The VM's partition coalesces: until the commit lands (within its bound) the relay
        // serves the vector; the interrupt path below is the kernel's once the route is armed.
        #expect(g.vm.waitUntil { (g.device.emulator.route(3) as? KVMIrqFdRoute)?.isArmed == true })

        let event = try g.device.emulator.event(for: 3)
        let eventFD = try #require(event as? EventFD)
        let holder = try EventHolderProcess(holding: eventFD, socketName: "irqfd-device")

        let before = g.vm.vm.counters.snapshot
        for n in 1...3 {
            try holder.signal()
            #expect(
                guest.waitForCount(vector: 0x45, atLeast: UInt32(n)),
                "signal \(n) from pid \(holder.process.processIdentifier)")
        }
        let made = g.vm.vm.counters.snapshot - before
        #expect(made.total == 0, "no VM ioctl on the interrupt path: \(made)")
        #expect(g.device.signaled == 0, "the VMM's device thread never signalled")

        // Masking still works across processes: the signal latches, the PBA shows it, unmask delivers it once.
        try guest.setMasked(3, true)
        try holder.signal()
        g.settle()
        #expect(guest.count(vector: 0x45) == 3)
        #expect(try guest.readPBA() == 1 << 3)
        try guest.setMasked(3, false)
        #expect(guest.waitForCount(vector: 0x45, atLeast: 4))
        g.settle()
        #expect(guest.count(vector: 0x45) == 4)

        try holder.quit()
        g.finish()
    }

    /// `irqfd run --delivery` gives the same result every way: a guest that
    /// drives the device by itself exits 22 only if every interrupt arrived
    /// exactly once and the PBA showed the masked one.
    @Test func irqfdRunGivesTheSameResultInEveryDeliveryMode() throws {
        let irqfd = try builtExecutable("irqfd")
        let image = FileManager.default.temporaryDirectory.appendingPathComponent("msix-selftest-\(getpid()).bin")
        try Data(GuestProgram.msixSelfTest.image).write(to: image)
        defer { try? FileManager.default.removeItem(at: image) }
        for delivery in InterruptDelivery.allCases {
            let (status, _, errors) = try runProcess(
                irqfd, ["run", "--delivery", delivery.rawValue, "--timeout", "30", image.path])
            #expect(status == 22, "--delivery \(delivery): \(errors)")
        }
        let (status, _, errors) = try runProcess(
            irqfd, ["run", "--vectors", "2048", "--delivery", "relay", image.path])
        #expect(status == 22, "2048 vectors: \(errors)")
        let tooMany = try runProcess(irqfd, ["run", "--vectors", "2049", image.path])
        #expect(tooMany.status == 1 && tooMany.stderr.contains("--vectors must be 1...2048"), "\(tooMany.stderr)")
        let unknown = try runProcess(irqfd, ["run", "--delivery", "carrier-pigeon", image.path])
        #expect(unknown.status != 0 && unknown.stderr.contains("irqfd, relay, userspace"), "\(unknown.stderr)")
    }

    @Test func theSelfTestGuestPassesInProcessToo() throws {
        for delivery in InterruptDelivery.allCases {
            let vm = try TinyVM()
            try MsixTestDevice.attach(to: vm, delivery: delivery)
            try vm.load(GuestProgram.msixSelfTest.image)
            #expect(vm.run(timeout: .seconds(30)) == .exited(code: 22), "\(delivery)")
        }
    }
}
#endif
