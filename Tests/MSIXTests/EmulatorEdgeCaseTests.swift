import IrqFdCore
import MSIX
import Testing

/// The MSI-X emulator's edge cases: what a failed route call leaves recorded,
/// a saved pending bit across a restore, host calls with absurd arguments,
/// Bus Master Enable, byte enables within a DWORD, and routes across a reset;
/// each checked against the recording partition (the emulator's bookkeeping
/// and every route call it makes). The same cases are checked on real KVM
/// guests in TinyVMTests.
@Suite struct MsixEdgeCaseTests {
    let irqfd = RecordingIrqFd()
    let injector = RecordingInjector()

    /// A failed `setMsi` in `event(for:)` must not leave its message
    /// recorded as programmed: the next route would inherit the record, going
    /// live would skip `setMsi`, and every signal on the vector would count as
    /// undeliverable.
    @Test func eventForAfterAFailedSetMsiStillDelivers() throws {
        let emulator = MsixEmulator.make(8, .irqfd(irqfd, fallback: injector))
        emulator.control(enable: true)
        irqfd.failNext("new")
        emulator.program(0, msi(0x40), masked: false)
        #expect(emulator.isLive(0) && emulator.route(0) == nil, "live through the fallback: no route could be made")
        irqfd.failNext("setMsi")
        #expect(throws: IrqFdError.self) { _ = try emulator.event(for: 0) }
        emulator.setMasked(0, true)
        _ = try emulator.event(for: 0)  // a masked route now
        _ = irqfd.take()
        emulator.setMasked(0, false)
        #expect(irqfd.take().calls == [.setMsi(1, msi(0x40)), .unmask(1)], "the new route is given its message")
        emulator.signal(vector: 0)
        #expect(irqfd.delivered == [msi(0x40)])
        #expect(emulator.counters.undeliverable == 0)
    }

    /// A saved pending bit on a vector that is live before and after
    /// the restore is delivered once, not left stuck in the PBA of an unmasked vector.
    @Test(arguments: [false, true])
    func restoreDeliversAPendingBitOfAVectorLiveBeforeAndAfter(userspace: Bool) throws {
        let emulator = MsixEmulator.make(8, userspace ? .userspace(injector) : .irqfd(irqfd))
        emulator.control(enable: true)
        emulator.program(2, msi(0x42), masked: false)
        var saved = emulator.save()
        saved.pendingBits[0] |= 1 << 2
        _ = irqfd.take()
        try emulator.restore(saved)
        let delivered = userspace ? injector.take() : irqfd.take().delivered
        #expect(delivered == [msi(0x42)], "the pending interrupt is delivered once")
        #expect(emulator.pba() == 0)
        #expect(emulator.isLive(2))
    }

    /// No host call traps, whatever its offset, size or vector.
    @Test func hostAccessesWithAbsurdArgumentsAreCountedNeverATrap() throws {
        let emulator = MsixEmulator.make(8, .irqfd(irqfd))
        for offset in [Int.max, Int.max - 1, Int.max - 3, Int.min, -1, 11, 12] {
            for size in [1, 2, 4, 0, -1, .max, .min] {
                #expect(emulator.readCapability(offset: offset, size: size) == 0, "offset \(offset), size \(size)")
                emulator.writeCapability(offset: offset, size: size, value: .max)
            }
        }
        for offset: UInt64 in [.max, .max - 7, .max - 3] {
            for size in [4, 8, .max, .min] {
                #expect(emulator.readTable(offset: offset, size: size) == 0)
                #expect(emulator.readPBA(offset: offset, size: size) == 0)
                emulator.writeTable(offset: offset, size: size, value: .max)
                emulator.writePBA(offset: offset, size: size, value: .max)
                #expect(emulator.read(bar: .max, offset: offset, size: size) == 0)
                emulator.write(bar: .min, offset: offset, size: size, value: 0)
                #expect(emulator.read(bar: 1, offset: offset, size: size) == 0)
            }
        }
        for v in [Int.min, -1, 8, Int.max] {
            emulator.signal(vector: v)
            #expect(throws: IrqFdError.self) { _ = try emulator.event(for: v) }
            #expect(emulator.entry(v) == MsixSavedState.Entry())
            #expect(!emulator.isLive(v) && !emulator.isPending(v) && emulator.route(v) == nil)
            #expect(!emulator.save().isPending(v))
        }
        #expect(!emulator.isEnabled && emulator.routeCount == 0)
        #expect(irqfd.calls.isEmpty)
    }

    /// With Bus Master Enable clear a vector is not live: its
    /// interrupts are held as pending (one `mask` per live vector, in one
    /// batch) and delivered once when bus mastering is back.
    @Test(arguments: [false, true])
    func busMasterEnableClearHoldsInterruptsAsPending(userspace: Bool) {
        let emulator = MsixEmulator.make(8, userspace ? .userspace(injector) : .irqfd(irqfd))
        emulator.control(enable: true)
        emulator.program(0, msi(0x30), masked: false)
        emulator.program(1, msi(0x31), masked: false)
        _ = irqfd.take()
        emulator.setBusMaster(false)
        #expect(!emulator.isBusMasterEnabled && !emulator.isLive(0) && !emulator.isLive(1))
        if !userspace {
            let calls = irqfd.take().calls
            #expect(
                calls.first == .beginBatch && calls.last == .endBatch
                    && Set(calls.dropFirst().dropLast()) == [.mask(0), .mask(1)])
        }
        emulator.signal(vector: 0)
        emulator.signal(vector: 0)
        #expect((userspace ? injector.take() : irqfd.take().delivered).isEmpty, "no MSI-X while bus mastering is off")
        #expect(emulator.pba() == 0b01)
        emulator.setBusMaster(true)
        #expect(emulator.isLive(0) && emulator.isLive(1))
        #expect((userspace ? injector.take() : irqfd.take().delivered) == [msi(0x30)], "held, then delivered once")
        #expect(emulator.pba() == 0)
    }

    /// Any byte enables within a DWORD are legal, in the capability too.
    @Test func capabilityReadsAndWritesAnyBytesWithinADword() {
        let emulator = MsixEmulator.make(8, .irqfd(irqfd))
        #expect(emulator.readCapability(offset: 1, size: 2) == 0x0700, "next pointer 0, table size 7")
        #expect(emulator.readCapability(offset: 3, size: 1) == 0)
        #expect(emulator.readCapability(offset: 5, size: 2) == 0)
        #expect(emulator.readCapability(offset: 9, size: 2) == 0x0080, "PBA offset 0x8000, bytes 1-2")
        emulator.writeCapability(offset: 1, size: 2, value: 0x0000)  // next pointer and the table size: read-only
        #expect(emulator.readCapability(offset: 0, size: 4) == 0x0007_0011)
        emulator.writeCapability(offset: 3, size: 1, value: 0x80)
        #expect(emulator.isEnabled)
        #expect(emulator.readCapability(offset: 1, size: 2) == 0x0700)
        #expect(emulator.readCapability(offset: 2, size: 2) == 0x8007)
        #expect(emulator.readCapability(offset: 3, size: 2) == 0, "crosses into the next DWORD")
        #expect(emulator.counters.misaligned == 1 && emulator.counters.badAccesses == 1)
    }

    /// A reset keeps each route and its event (masked, drained and
    /// cleared, in one batch), so an event handed out stays the vector's.
    @Test func resetKeepsEveryRouteAndItsEvent() throws {
        let emulator = MsixEmulator.make(8, .irqfd(irqfd))
        emulator.control(enable: true)
        for v in 0..<3 { emulator.program(v, msi(0x30 + UInt8(v)), masked: false) }
        let events = try (0..<4).map { v in try #require(emulator.event(for: v) as? RecordingEvent) }
        emulator.setMasked(1, true)
        emulator.signal(vector: 1)  // latched before the reset: not an interrupt of the reset function
        _ = irqfd.take()
        emulator.reset()
        let calls = irqfd.take().calls
        #expect(calls.first == .beginBatch && calls.last == .endBatch && calls.filter { $0 == .beginBatch }.count == 1)
        #expect(
            Set(calls.filter { if case .mask = $0 { true } else { false } }) == [.mask(0), .mask(2)], "live ones masked"
        )
        #expect(
            Set(calls.filter { if case .clearMsi = $0 { true } else { false } }) == Set((0..<4).map { .clearMsi($0) }))
        #expect(!calls.contains { if case .drop = $0 { true } else { false } }, "no route dropped: \(calls)")
        #expect(emulator.routeCount == 4 && !emulator.isEnabled)
        #expect((0..<8).allSatisfy { emulator.entry($0) == MsixSavedState.Entry() })
        #expect(emulator.pba() == 0, "what latched before the reset is gone")
        for v in 0..<4 { #expect(try emulator.event(for: v) === events[v], "vector \(v) keeps its event") }

        // The driver brings the function back; the holder's event delivers.
        _ = irqfd.take()
        emulator.control(enable: true)
        emulator.program(1, msi(0x51), masked: false)
        #expect(irqfd.take().calls == [.setMsi(1, msi(0x51)), .unmask(1)], "the kept route is given its new message")
        events[1].signal()
        #expect(irqfd.delivered == [msi(0x51)])
        // A signal from the holder on a vector still masked after the reset pends.
        events[3].signal()
        #expect(emulator.pba() == 0b1000)
    }
}
