#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import KVM
import MSIX
import TestSupport
import Testing
import TinyVM

/// An MSI-X function handed to a successor VM: its table, control bits and
/// PBA move as saved state, each vector's event moves as itself, and signals
/// that latched while no VM listened reach the guest once.
@Suite(needsKVM) struct MsixHandOffTests {
    static let liveVector: UInt8 = 0x46
    static let maskedVector: UInt8 = 0x47

    /// Programs vector `v` with `vector` on vCPU 0, masked or not.
    static func program(_ emulator: MsixEmulator, _ v: Int, vector: UInt8, masked: Bool) {
        let m = MsiMessage(destination: 0, vector: vector)
        let base = UInt64(16 * v)
        emulator.writeTable(offset: base, size: 4, value: m.address & 0xFFFF_FFFF)
        emulator.writeTable(offset: base + 4, size: 4, value: m.address >> 32)
        emulator.writeTable(offset: base + 8, size: 4, value: UInt64(m.data))
        emulator.writeTable(offset: base + 12, size: 4, value: masked ? 1 : 0)
    }

    static func count(_ vm: TinyVM, _ vector: UInt8) -> UInt32 {
        vm.memory.read32(at: InterruptCounterLayout.count(cpu: 0, vector: vector))
    }

    /// The old side of a hand-off: a live vector 0 and a masked vector 1,
    /// each with signals latched in its event while the routes are disarmed.
    static func oldSide() throws -> (TinyVM, MsixEmulator, MsixSavedState) {
        let old = try LiveUpdateInProcessTests.countingGuest()
        let emulator = MsixEmulator(layout: MsixLayout(vectorCount: 4)!, delivery: .irqfd(old.irqfd))
        emulator.writeCapability(offset: 2, size: 2, value: 0x8000)
        program(emulator, 0, vector: liveVector, masked: false)
        program(emulator, 1, vector: maskedVector, masked: true)
        _ = try emulator.event(for: 1)
        emulator.signal(vector: 0)
        #expect(old.waitUntil { count(old, liveVector) == 1 }, "vector 0 is live")
        #expect(old.pause())
        // The hand-off disarms every route: signals from now on latch.
        try emulator.route(0)?.mask()
        emulator.signal(vector: 0)
        emulator.signal(vector: 1)
        emulator.signal(vector: 1)
        return (old, emulator, emulator.save())
    }

    @Test func latchedSignalsReachTheGuestOnceAndThePBAMovesOnAdoptedEvents() throws {
        let (old, emulator, saved) = try Self.oldSide()
        let pbaBefore = emulator.readPBA(offset: 0, size: 8)
        #expect(pbaBefore == 0b10, "the masked vector's bit")
        let new = try LiveUpdateInProcessTests.successor(of: old)
        try new.restoreMachineState(try old.saveMachineState())
        old.stop()
        _ = old.wait()
        let successor = MsixEmulator(layout: MsixLayout(vectorCount: 4)!, delivery: .irqfd(new.irqfd))
        try successor.restore(saved, adopting: emulator.handOffEvents)
        new.start()
        defer {
            new.stop()
            _ = new.wait()
        }
        #expect(new.waitUntil { Self.count(new, Self.liveVector) == 2 }, "the signal latched in the pause arrives")
        #expect(successor.readPBA(offset: 0, size: 8) == pbaBefore, "the PBA reads the same")
        #expect(try successor.event(for: 0) === emulator.route(0)?.event, "the same event, adopted")
        Self.program(successor, 1, vector: Self.maskedVector, masked: false)
        #expect(new.waitUntil { Self.count(new, Self.maskedVector) == 1 }, "unmask delivers the pending bit")
        successor.signal(vector: 0)
        #expect(new.waitUntil { Self.count(new, Self.liveVector) == 3 })
        usleep(20_000)
        #expect(Self.count(new, Self.liveVector) == 3, "once each")
        #expect(Self.count(new, Self.maskedVector) == 1, "once")
        #expect(successor.readPBA(offset: 0, size: 8) == 0)
    }

    @Test func aFreshRestoreWithoutTheEventsLosesWhatLatched() throws {
        // What adoption prevents: the successor's own events never saw the
        // signal latched in the old event during the pause.
        let (old, _, saved) = try Self.oldSide()
        let new = try LiveUpdateInProcessTests.successor(of: old)
        try new.restoreMachineState(try old.saveMachineState())
        old.stop()
        _ = old.wait()
        let successor = MsixEmulator(layout: MsixLayout(vectorCount: 4)!, delivery: .irqfd(new.irqfd))
        try successor.restore(saved)
        new.start()
        defer {
            new.stop()
            _ = new.wait()
        }
        usleep(50_000)
        #expect(Self.count(new, Self.liveVector) == 1, "the latched signal stayed in the old event")
    }
}
#endif
