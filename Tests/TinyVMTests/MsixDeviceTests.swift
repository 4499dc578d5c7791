#if os(Linux)
import Foundation
import IrqFdCore
import KVM
import MSIX
import PCI
import TestSupport
import Testing
import TinyVM

/// A running VM with the PCI test device and the device-driver guest: every
/// access to the device below is made by the guest.
struct DeviceGuest {
    let vm: TinyVM
    let device: MsixTestDevice
    let guest: DeviceDriverGuest

    init(cpus: Int = 1, vectors: Int = 8, delivery: InterruptDelivery) throws {
        vm = try TinyVM(.init(cpus: cpus))
        device = try MsixTestDevice.attach(to: vm, vectors: vectors, delivery: delivery)
        guest = try DeviceDriverGuest(vm: vm)
        try guest.start()
    }

    /// MSI-X on, and `entry` programmed unmasked with `vector` on vCPU `cpu`.
    func enable(entry: Int, vector: UInt8, cpu: UInt32 = 0) throws {
        try guest.setMsix(enabled: true)
        try guest.program(entry, message(vector, cpu: cpu), masked: false)
    }

    /// `enable`, then the guest rings `entry` once: whether its first
    /// interrupt arrived.
    func ringLive(entry: Int, vector: UInt8, cpu: UInt32 = 0) throws -> Bool {
        try enable(entry: entry, vector: vector, cpu: cpu)
        try guest.ring(entry)
        return guest.waitForCount(cpu: Int(cpu), vector: vector, atLeast: 1)
    }

    /// Waits for the device thread, then long enough for a stray extra
    /// interrupt to show up if there were one.
    func settle() {
        device.waitUntilIdle()
        usleep(100_000)
    }

    func finish() {
        guest.exit(0)
        #expect(vm.wait(timeout: .seconds(10)) == .exited(code: 0))
        #expect(device.emulator.counters.routeErrors == 0, "\(device.emulator.lastRouteError.map { "\($0)" } ?? "")")
    }
}

func message(_ vector: UInt8, cpu: UInt32 = 0) -> MsiMessage { MsiMessage(destination: cpu, vector: vector) }

@Suite(needsKVM, .serialized) struct MsixDeviceTests {
    @Test func theGuestSeesTheDeviceInConfigurationSpace() throws {
        let g = try DeviceGuest(delivery: .irqfd)
        let guest = g.guest
        #expect(try guest.configRead(offset: 0, size: 4) == 0x5849_5344)
        #expect(try guest.configRead(offset: 0, size: 2) == 0x5344, "vendor ID")
        #expect(try guest.configRead(offset: 2, size: 2) == 0x5849, "device ID")
        #expect(try guest.configRead(offset: 0x06, size: 2) & 0x10 != 0, "status: capabilities list")
        #expect(try guest.configRead(offset: 0x0E, size: 1) == 0, "header type 0")
        #expect(try guest.configRead(offset: 0x34, size: 1) == 0x40, "capability pointer")
        #expect(try guest.configRead(offset: 0x40, size: 1) == 0x11, "MSI-X capability ID")
        #expect(try guest.configRead(offset: 0x42, size: 2) == 7, "table size 8 - 1, disabled, unmasked")
        #expect(try guest.configRead(offset: 0x44, size: 4) == 0x0000_0001, "table: BAR1 + 0")
        #expect(try guest.configRead(offset: 0x48, size: 4) == 0x0000_8001, "PBA: BAR1 + 0x8000")
        #expect(try guest.configRead(offset: 0x10, size: 4) == 0xFE00_0000)
        #expect(try guest.configRead(offset: 0x14, size: 4) == 0xFE01_0000)
        // BAR sizing: all ones in, size mask out, then the address back.
        try guest.configWrite(offset: 0x10, size: 4, 0xFFFF_FFFF)
        #expect(try guest.configRead(offset: 0x10, size: 4) == 0xFFFF_F000, "4 KiB")
        try guest.configWrite(offset: 0x10, size: 4, 0xFE00_0000)
        try guest.configWrite(offset: 0x14, size: 4, 0xFFFF_FFFF)
        #expect(try guest.configRead(offset: 0x14, size: 4) == 0xFFFF_0000, "64 KiB")
        try guest.configWrite(offset: 0x14, size: 4, 0xFE01_0000)
        // An empty slot reads as all ones.
        #expect(try guest.configRead(device: 2, offset: 0, size: 4) == 0xFFFF_FFFF)
        // BAR0 registers.
        #expect(try guest.read32(MsixTestDevice.registersBase) == 0x5849_5344, "ID reads DSIX")
        #expect(try guest.read32(MsixTestDevice.registersBase + 4) == 8, "vector count")
        #expect(try guest.signaled() == 0)
        // The table in BAR1: every entry masked after reset.
        #expect(try guest.readEntry(7, field: 3) == 1)
        g.finish()
    }

    @Test(arguments: InterruptDelivery.allCases)
    func eachVectorDeliversItsOwnInterrupt(delivery: InterruptDelivery) throws {
        let g = try DeviceGuest(delivery: delivery)
        try g.guest.setMsix(enabled: true)
        for v in 0..<8 { try g.guest.program(v, message(0x30 + UInt8(v)), masked: false) }
        for v in 0..<8 {
            try g.guest.ring(v)
            #expect(g.guest.waitForCount(vector: 0x30 + UInt8(v), atLeast: 1), "\(delivery): vector \(v)")
        }
        g.settle()
        for v in 0..<8 { #expect(g.guest.count(vector: 0x30 + UInt8(v)) == 1, "\(delivery): vector \(v) exactly once") }
        #expect(try g.guest.signaled() == 8)
        #expect(g.device.emulator.routeCount == (delivery == .userspace ? 0 : 8))
        g.finish()
    }

    @Test(arguments: InterruptDelivery.allCases)
    func aMaskedVectorPendsInThePBAAndDeliversOnceOnUnmask(delivery: InterruptDelivery) throws {
        let g = try DeviceGuest(delivery: delivery)
        let guest = g.guest
        #expect(try g.ringLive(entry: 2, vector: 0x42))
        try guest.setMasked(2, true)
        #expect(try guest.readPBA() == 0)
        try guest.burst(2, count: 3)
        g.settle()
        #expect(try guest.signaled() == 4)
        #expect(guest.count(vector: 0x42) == 1, "\(delivery): nothing delivered while masked")
        #expect(try guest.readPBA() == 1 << 2, "\(delivery): the pending bit is set")
        try guest.setMasked(2, false)
        #expect(guest.waitForCount(vector: 0x42, atLeast: 2))
        g.settle()
        #expect(guest.count(vector: 0x42) == 2, "\(delivery): three masked signals, one pending interrupt")
        #expect(try guest.readPBA() == 0)
        try guest.ring(2)
        #expect(guest.waitForCount(vector: 0x42, atLeast: 3), "\(delivery): live again")
        g.finish()
    }

    @Test(arguments: InterruptDelivery.allCases)
    func theFunctionMaskHoldsEveryVectorAndReleasesPending(delivery: InterruptDelivery) throws {
        let g = try DeviceGuest(delivery: delivery)
        let guest = g.guest
        try guest.setMsix(enabled: true)
        for v in 0..<4 { try guest.program(v, message(0x50 + UInt8(v)), masked: false) }
        try guest.setMsix(enabled: true, functionMasked: true)
        for v in 0..<4 { try guest.ring(v) }
        g.settle()
        #expect((0..<4).allSatisfy { guest.count(vector: 0x50 + UInt8($0)) == 0 }, "\(delivery): held")
        #expect(try guest.readPBA() == 0xF)
        try guest.setMsix(enabled: true, functionMasked: false)
        for v in 0..<4 { #expect(guest.waitForCount(vector: 0x50 + UInt8(v), atLeast: 1)) }
        g.settle()
        #expect((0..<4).allSatisfy { guest.count(vector: 0x50 + UInt8($0)) == 1 }, "\(delivery): released once each")
        #expect(try guest.readPBA() == 0)
        g.finish()
    }

    @Test(arguments: InterruptDelivery.allCases)
    func disablingMsixStopsDelivery(delivery: InterruptDelivery) throws {
        let g = try DeviceGuest(delivery: delivery)
        let guest = g.guest
        #expect(try g.ringLive(entry: 0, vector: 0x60))
        try guest.setMsix(enabled: false)
        try guest.ring(0)
        try guest.ring(0)
        g.settle()
        #expect(guest.count(vector: 0x60) == 1, "\(delivery): no delivery while MSI-X is off")
        try guest.setMsix(enabled: true)
        #expect(guest.waitForCount(vector: 0x60, atLeast: 2))
        g.settle()
        #expect(guest.count(vector: 0x60) == 2, "\(delivery): what was raised meanwhile arrives once")
        g.finish()
    }

    @Test(arguments: InterruptDelivery.allCases)
    func twoThousandFortyEightVectorsGoLiveInOneBatch(delivery: InterruptDelivery) throws {
        let g = try DeviceGuest(vectors: 2048, delivery: delivery)
        let guest = g.guest
        try guest.setMsix(enabled: true, functionMasked: true)
        let programming = ContinuousClock.now
        let pushesBefore = g.vm.vm.counters.snapshot.routingPushes
        try guest.programTable(count: 2048, firstVector: 0x30, vectorMask: 0x7F, masked: false)
        print(
            "the guest programmed 2048 entries (8192 MMIO writes) in \(ContinuousClock.now - programming),",
            "\(g.vm.vm.counters.snapshot.routingPushes - pushesBefore) pushes")
        #expect((0..<2048).allSatisfy { !g.device.emulator.isLive($0) }, "nothing is live under the function mask")
        if delivery == .irqfd {
            // Routed as soon as programmed (the partition coalesces): masked, nothing armed,
            // the entries committed while the function mask holds.
            #expect(g.device.emulator.routeCount == 2048)
            #expect(g.vm.waitUntil { g.vm.irqfd.waitingEntryCount == 0 })
            #expect(g.vm.vm.counters.snapshot.irqfdAssigns == 0)
        } else {
            #expect(g.device.emulator.routeCount == 0)
        }
        let before = g.vm.vm.counters.snapshot
        let start = ContinuousClock.now
        try guest.setMsix(enabled: true, functionMasked: false)
        let elapsed = ContinuousClock.now - start
        let made = g.vm.vm.counters.snapshot - before
        print("2048 vectors live via \(delivery): \(made) in \(elapsed)")
        switch delivery {
        case .irqfd:
            #expect(made.routingPushes == 0, "the entries are in the kernel already: going live only arms")
            #expect(made.irqfdAssigns == 2048)
            #expect(g.device.emulator.routeCount == 2048)
        case .relay:
            #expect(made.routingPushes == 0 && made.irqfdAssigns == 0)
            #expect(g.device.emulator.routeCount == 2048)
        case .userspace:
            #expect(made.routingPushes == 0 && made.irqfdAssigns == 0)
            #expect(g.device.emulator.routeCount == 0)
        }
        for v in [0, 1000, 2047] {
            let vector = 0x30 + UInt8(v & 0x7F)
            let seen = guest.count(vector: vector)
            try guest.ring(v)
            #expect(guest.waitForCount(vector: vector, atLeast: seen + 1), "\(delivery): vector \(v)")
        }
        // Masking and unmasking the whole function again pushes nothing.
        let again = g.vm.vm.counters.snapshot
        try guest.setMsix(enabled: true, functionMasked: true)
        try guest.setMsix(enabled: true, functionMasked: false)
        #expect((g.vm.vm.counters.snapshot - again).routingPushes == 0)
        g.finish()
    }

    @Test(arguments: InterruptDelivery.allCases)
    func aLiveVectorRetargetsToTheOtherVCPU(delivery: InterruptDelivery) throws {
        let g = try DeviceGuest(cpus: 2, delivery: delivery)
        let guest = g.guest
        #expect(try g.ringLive(entry: 5, vector: 0x70, cpu: 0))
        let pushes = g.vm.vm.counters.snapshot
        // A driver retargets by rewriting the address of a live entry.
        try guest.write32(MsixTestDevice.msixBase + 16 * 5, UInt32(message(0x70, cpu: 1).address))
        // The VM's partition coalesces: the new entry is pushed by the commit (within its
        // bound), the relay serving the vector meanwhile.
        #expect(g.vm.waitUntil { g.vm.irqfd.waitingEntryCount == 0 })
        #expect((g.vm.vm.counters.snapshot - pushes).routingPushes == (delivery == .irqfd ? 1 : 0))
        try guest.ring(5)
        #expect(guest.waitForCount(cpu: 1, vector: 0x70, atLeast: 1), "\(delivery): landed on vCPU 1")
        g.settle()
        #expect(guest.count(cpu: 0, vector: 0x70) == 1 && guest.count(cpu: 1, vector: 0x70) == 1)
        g.finish()
    }

    @Test(arguments: InterruptDelivery.allCases)
    func aSignalLatchedInAMaskedVectorSurvivesSaveAndRestore(delivery: InterruptDelivery) throws {
        let source = try DeviceGuest(delivery: delivery)
        try source.guest.setMsix(enabled: true)
        try source.guest.program(0, message(0x31), masked: false)
        try source.guest.program(1, message(0x32), masked: false)
        try source.guest.setMasked(1, true)
        try source.guest.ring(1)  // latched in the masked route's event (irqfd, relay) or the PBA (userspace)
        source.settle()
        #expect(source.guest.count(vector: 0x32) == 0)
        let saved = source.device.save()
        #expect(saved.msix.isPending(1), "\(delivery): the latched signal is in the saved PBA")
        #expect(saved.signaled == 1)
        source.finish()

        // A new VM, as after migration: restore the device, then let the guest unmask.
        let target = try DeviceGuest(delivery: delivery)
        try target.device.restore(saved)
        #expect(try target.guest.readPBA() == 0b10)
        #expect(try target.guest.signaled() == 1)
        #expect(try target.guest.readEntry(1, field: 2) == 0x32)
        try target.guest.setMasked(1, false)
        #expect(target.guest.waitForCount(vector: 0x32, atLeast: 1), "\(delivery): delivered on unmask after restore")
        target.settle()
        #expect(target.guest.count(vector: 0x32) == 1)
        try target.guest.ring(0)
        #expect(
            target.guest.waitForCount(vector: 0x31, atLeast: 1), "\(delivery): the live vector's route was reprogrammed"
        )
        target.finish()
    }
}
#endif
