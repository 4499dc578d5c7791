import IrqFdCore
import MSIX
import Testing

/// A message to APIC `cpu` with `vector`.
func msi(_ vector: UInt8, cpu: UInt32 = 0) -> MsiMessage { MsiMessage(destination: cpu, vector: vector) }

/// Guest-style accessors: what a driver writes through config space and BAR.
extension MsixEmulator {
    static func make(_ vectors: Int = 8, _ delivery: MsixDelivery) -> MsixEmulator {
        MsixEmulator(layout: MsixLayout(vectorCount: vectors)!, delivery: delivery)
    }
    /// A 16-bit write of Message Control (capability offset 2).
    func control(enable: Bool, functionMask: Bool = false) {
        writeCapability(offset: 2, size: 2, value: (enable ? 0x8000 : 0) | (functionMask ? 0x4000 : 0))
    }
    /// Programs entry `v` with four DWORD writes, the way Linux does.
    func program(_ v: Int, _ message: MsiMessage, masked: Bool) {
        let base = UInt64(16 * v)
        writeTable(offset: base, size: 4, value: message.address & 0xFFFF_FFFF)
        writeTable(offset: base + 4, size: 4, value: message.address >> 32)
        writeTable(offset: base + 8, size: 4, value: UInt64(message.data))
        writeTable(offset: base + 12, size: 4, value: masked ? 1 : 0)
    }
    func setMasked(_ v: Int, _ masked: Bool) { writeTable(offset: UInt64(16 * v + 12), size: 4, value: masked ? 1 : 0) }
    func pba(_ word: Int = 0) -> UInt64 { readPBA(offset: UInt64(8 * word), size: 8) }
}

@Suite struct MsixTransitionTests {
    let irqfd = RecordingIrqFd()
    let emulator: MsixEmulator

    init() { emulator = .make(8, .irqfd(irqfd)) }

    @Test func resetStateIsMaskedDisabledAndRouteless() {
        #expect(emulator.readCapability(offset: 0, size: 1) == 0x11)
        #expect(emulator.readCapability(offset: 0, size: 4) == 0x0007_0011, "ID 0x11, next 0, table size 7, disabled")
        #expect(emulator.readCapability(offset: 2, size: 2) == 7)
        #expect(emulator.readCapability(offset: 4, size: 4) == 0x0000_0001, "table at BAR1 + 0")
        #expect(emulator.readCapability(offset: 8, size: 4) == 0x0000_8001, "PBA at BAR1 + 0x8000")
        for v in 0..<8 {
            #expect(emulator.readTable(offset: UInt64(16 * v + 12), size: 4) == 1, "vector \(v) masked")
            #expect(emulator.readTable(offset: UInt64(16 * v), size: 8) == 0)
        }
        #expect(emulator.pba() == 0)
        #expect(emulator.routeCount == 0)
        #expect(irqfd.calls.isEmpty)
    }

    @Test func enablingWithEveryVectorMaskedMakesNoRouteCall() {
        emulator.control(enable: true)
        emulator.control(enable: true, functionMask: true)
        emulator.control(enable: false)
        #expect(irqfd.calls.isEmpty)
        #expect(emulator.routeCount == 0)
    }

    @Test func goingLiveMakesTheRouteThenSetsUnmasks() {
        emulator.program(3, msi(0x40), masked: false)
        #expect(irqfd.calls.isEmpty, "disabled: the vector is not live, nothing to do")
        emulator.control(enable: true)
        #expect(irqfd.calls == [.beginBatch, .newRoute(0), .setMsi(0, msi(0x40)), .unmask(0), .endBatch])
        #expect(emulator.isLive(3) && emulator.routeCount == 1)
    }

    @Test func entryMaskAndUnmaskOnALiveFunction() {
        emulator.control(enable: true)
        _ = irqfd.take()
        emulator.program(0, msi(0x30), masked: true)
        #expect(irqfd.calls.isEmpty, "a masked entry is not live: no route yet")
        emulator.setMasked(0, false)
        #expect(irqfd.take().calls == [.newRoute(0), .setMsi(0, msi(0x30)), .unmask(0)])
        emulator.setMasked(0, true)
        #expect(irqfd.take().calls == [.mask(0)])
        emulator.setMasked(0, false)
        #expect(irqfd.take().calls == [.unmask(0)], "message unchanged: no setMsi")
    }

    @Test func aNewMessageOnALiveVectorIsOneSetMsi() {
        emulator.control(enable: true)
        emulator.program(1, msi(0x30), masked: false)
        _ = irqfd.take()
        emulator.writeTable(offset: 16 + 8, size: 4, value: UInt64(msi(0x31).data))
        #expect(irqfd.take().calls == [.setMsi(0, msi(0x31))])
        emulator.writeTable(offset: 16, size: 4, value: msi(0x31, cpu: 1).address)
        #expect(irqfd.take().calls == [.setMsi(0, msi(0x31, cpu: 1))])
    }

    @Test func aNewMessageOnADeadVectorWaitsUntilItGoesLive() {
        emulator.control(enable: true)
        emulator.program(2, msi(0x30), masked: false)
        emulator.setMasked(2, true)
        _ = irqfd.take()
        emulator.program(2, msi(0x50, cpu: 1), masked: true)
        #expect(irqfd.take().calls.isEmpty, "Linux rewrites masked entries often: no call")
        emulator.setMasked(2, false)
        #expect(irqfd.take().calls == [.setMsi(0, msi(0x50, cpu: 1)), .unmask(0)])
    }

    @Test func aWriteThatChangesNothingMakesNoRouteCall() {
        emulator.control(enable: true)
        emulator.program(0, msi(0x30), masked: false)
        emulator.program(1, msi(0x31), masked: true)
        _ = irqfd.take()
        for _ in 0..<3 {
            emulator.program(0, msi(0x30), masked: false)  // live, same values
            emulator.program(1, msi(0x31), masked: true)  // dead, same values
            emulator.writeTable(offset: 0, size: 8, value: msi(0x30).address)  // QWORD, same
            emulator.control(enable: true)  // same control bits
            emulator.writeCapability(offset: 3, size: 1, value: 0x80)  // same, by byte
            emulator.writeCapability(offset: 0, size: 4, value: 0x8000_0000)  // RO fields + same control
            emulator.writeCapability(offset: 4, size: 4, value: 0xFFFF_FFFF)  // read-only table offset/BIR
            _ = emulator.readTable(offset: 0, size: 4)
        }
        #expect(irqfd.calls.isEmpty)
        #expect(emulator.counters.badAccesses == 0)
    }

    @Test func functionMaskHoldsEveryLiveVectorAndReleasesPending() {
        emulator.control(enable: true)
        for v in 0..<3 { emulator.program(v, msi(0x30 + UInt8(v)), masked: v == 2) }
        _ = irqfd.take()
        emulator.control(enable: true, functionMask: true)
        #expect(irqfd.take().calls == [.beginBatch, .mask(0), .mask(1), .endBatch], "only live vectors are touched")
        emulator.signal(vector: 0)
        emulator.signal(vector: 1)
        emulator.signal(vector: 1)
        #expect(irqfd.delivered.isEmpty)
        #expect(emulator.pba() == 0b011)
        _ = irqfd.take()
        emulator.control(enable: true, functionMask: false)
        let (calls, delivered) = irqfd.take()
        #expect(calls == [.beginBatch, .consumePending(0), .unmask(0), .consumePending(1), .unmask(1), .endBatch])
        #expect(delivered == [msi(0x30), msi(0x31)], "each pending vector delivers exactly once")
        #expect(emulator.pba() == 0)
    }

    @Test func disablingMsixMasksLiveVectorsAndStopsDelivery() {
        emulator.control(enable: true)
        emulator.program(0, msi(0x30), masked: false)
        emulator.signal(vector: 0)
        #expect(irqfd.take().delivered == [msi(0x30)])
        emulator.control(enable: false)
        #expect(irqfd.take().calls == [.beginBatch, .mask(0), .endBatch])
        emulator.signal(vector: 0)
        #expect(irqfd.delivered.isEmpty)
        #expect(emulator.isPending(0))
    }

    @Test func aMaskedSignalSetsItsPBABitAndDeliversOnceOnUnmask() {
        emulator.control(enable: true)
        emulator.program(5, msi(0x35), masked: false)
        emulator.setMasked(5, true)
        _ = irqfd.take()
        emulator.signal(vector: 5)
        emulator.signal(vector: 5)
        #expect(irqfd.take().calls.isEmpty, "a device signal is an event write, not a route call")
        #expect(emulator.pba() == 1 << 5)
        #expect(irqfd.take().calls == [.consumePending(0)], "the PBA read folds the latched signal")
        emulator.signal(vector: 5)  // latches again after the fold: same pending interrupt
        #expect(emulator.pba() == 1 << 5)
        _ = irqfd.take()
        emulator.setMasked(5, false)
        let (calls, delivered) = irqfd.take()
        #expect(calls == [.consumePending(0), .unmask(0)])
        #expect(delivered == [msi(0x35)], "one pending bit, one interrupt")
        #expect(emulator.pba() == 0)
        emulator.signal(vector: 5)
        #expect(irqfd.take().delivered == [msi(0x35)], "live again: delivered at once")
    }

    @Test func signalsLatchedWithoutAPBAReadDeliverOnceOnUnmask() {
        emulator.control(enable: true)
        emulator.program(0, msi(0x30), masked: false)
        emulator.setMasked(0, true)
        for _ in 0..<3 { emulator.signal(vector: 0) }
        _ = irqfd.take()
        emulator.setMasked(0, false)
        let (calls, delivered) = irqfd.take()
        #expect(calls == [.unmask(0)], "no pending bit: the route's unmask injects what latched")
        #expect(delivered == [msi(0x30)])
    }

    @Test func aSignalBeforeTheFirstRouteIsAPendingBitDeliveredWhenLive() {
        emulator.program(7, msi(0x37), masked: false)
        emulator.signal(vector: 7)
        #expect(irqfd.calls.isEmpty && emulator.routeCount == 0)
        #expect(emulator.pba() == 1 << 7)
        emulator.control(enable: true)
        let (calls, delivered) = irqfd.take()
        #expect(calls == [.beginBatch, .newRoute(0), .setMsi(0, msi(0x37)), .unmask(0), .endBatch])
        #expect(delivered == [msi(0x37)])
        #expect(emulator.pba() == 0)
    }

    @Test func qwordAccessesUpdateBothHalvesAsOneChange() {
        emulator.control(enable: true)
        let message = msi(0x44, cpu: 300)  // extended destination ID
        emulator.writeTable(offset: 0, size: 8, value: message.address)
        emulator.writeTable(offset: 8, size: 8, value: UInt64(message.data))  // data + control 0 (unmasked)
        #expect(irqfd.take().calls == [.newRoute(0), .setMsi(0, message), .unmask(0)])
        #expect(emulator.readTable(offset: 0, size: 8) == message.address)
        #expect(emulator.readTable(offset: 8, size: 8) == UInt64(message.data))
        emulator.writeTable(offset: 8, size: 8, value: 1 << 32 | UInt64(message.data))  // mask via the high half
        #expect(irqfd.take().calls == [.mask(0)])
    }

    @Test func badAccessesAreIgnoredCountedAndReadAsZero() {
        emulator.control(enable: true)
        emulator.program(0, msi(0x30), masked: false)
        _ = irqfd.take()
        let before = (0..<8).map { emulator.entry($0) }
        // Wrong sizes.
        emulator.writeTable(offset: 12, size: 1, value: 1)
        emulator.writeTable(offset: 12, size: 2, value: 1)
        #expect(emulator.readTable(offset: 0, size: 2) == 0)
        #expect(emulator.readTable(offset: 0, size: 3) == 0)
        // Misaligned.
        emulator.writeTable(offset: 13, size: 4, value: 1)
        emulator.writeTable(offset: 4, size: 8, value: 1)
        #expect(emulator.readTable(offset: 2, size: 4) == 0)
        // Beyond the table, beyond the PBA, beyond the capability.
        emulator.writeTable(offset: 8 * 16, size: 4, value: 1)
        emulator.writeTable(offset: .max - 3, size: 4, value: 1)
        #expect(emulator.readTable(offset: 8 * 16, size: 4) == 0)
        #expect(emulator.readPBA(offset: 8, size: 8) == 0)
        #expect(emulator.readCapability(offset: 12, size: 4) == 0)
        emulator.writeCapability(offset: 3, size: 2, value: 0xFFFF)  // straddles two DWORDs
        #expect(emulator.read(bar: 1, offset: 0x4000, size: 4) == 0, "between the table and the PBA")
        #expect(emulator.read(bar: 0, offset: 0, size: 4) == 0, "another BAR")
        // PBA writes.
        emulator.writePBA(offset: 0, size: 8, value: .max)
        emulator.write(bar: 1, offset: 0x8000, size: 4, value: .max)
        #expect(emulator.pba() == 0)
        // Reserved bits: vector control 31:1 and address 1:0 are read-only zero.
        emulator.writeTable(offset: 16 + 12, size: 4, value: 0xFFFF_FFFE | 1)
        emulator.writeTable(offset: 16, size: 4, value: 0xFEE0_0003)
        emulator.writeCapability(offset: 2, size: 2, value: 0x8000 | 0x3800)
        #expect(emulator.readTable(offset: 16 + 12, size: 4) == 1)
        #expect(emulator.readTable(offset: 16, size: 4) == 0xFEE0_0000)
        #expect(emulator.readCapability(offset: 2, size: 2) == 0x8007)

        let c = emulator.counters
        #expect(
            c.wrongSize == 4 && c.misaligned == 4 && c.outOfRange == 7 && c.pbaWrites == 2 && c.reservedBits == 3,
            "\(c)")
        #expect((1..<8).allSatisfy { emulator.entry($0) == before[$0] || $0 == 1 })
        #expect(emulator.entry(0) == before[0])
        #expect(irqfd.calls.isEmpty, "entry 1 stayed masked; nothing else changed")
    }

    @Test func anUndeliverableAddressIsRefusedAndItsInterruptsDropped() {
        emulator.control(enable: true)
        let bad = MsiMessage(address: 0xDEAD_0000, data: 0x30)
        emulator.program(0, bad, masked: false)
        #expect(irqfd.take().calls == [.newRoute(0), .setMsi(0, bad), .unmask(0)])
        emulator.signal(vector: 0)
        #expect(irqfd.take().delivered.isEmpty)
        #expect(emulator.counters.undeliverable == 1)
        #expect(emulator.counters.routeErrors == 0, "a guest's bad address is not a VMM error")
        emulator.setMasked(0, false)
        #expect(irqfd.take().calls.isEmpty, "the same bad message is not offered twice")
        emulator.program(0, msi(0x30), masked: false)
        #expect(
            irqfd.take().calls == [.consumePending(0), .setMsi(0, msi(0x30))],
            "what latched meanwhile had nowhere to go")
        emulator.signal(vector: 0)
        #expect(irqfd.take().delivered == [msi(0x30)])
    }

    @Test func aFailedRouteCallIsCountedAndRetriedByTheNextWrite() {
        emulator.control(enable: true)
        emulator.program(0, msi(0x30), masked: false)
        emulator.setMasked(0, true)
        _ = irqfd.take()
        irqfd.failNext("unmask")
        emulator.setMasked(0, false)
        #expect(emulator.counters.routeErrors == 1)
        #expect(emulator.lastRouteError == .call("recorded unmask", .ioError))
        #expect(!emulator.isLive(0))
        emulator.signal(vector: 0)
        #expect(irqfd.take().delivered.isEmpty, "the route is still masked: the signal latched")
        emulator.setMasked(0, false)  // the guest rewrites the same value: the emulator retries
        let (calls, delivered) = irqfd.take()
        #expect(calls == [.unmask(0)])
        #expect(delivered == [msi(0x30)], "nothing lost")
        #expect(emulator.isLive(0))
    }

    @Test func eventForADeadVectorMakesAMaskedRoute() throws {
        let event = try emulator.event(for: 4)
        #expect(irqfd.take().calls == [.newRoute(0), .mask(0)])
        #expect(try emulator.event(for: 4) === event, "the same event every time")
        event.signal()  // another process's device
        #expect(emulator.pba() == 1 << 4)
        emulator.control(enable: true)
        _ = irqfd.take()
        emulator.program(4, msi(0x34), masked: false)
        let (calls, delivered) = irqfd.take()
        #expect(calls == [.setMsi(0, msi(0x34)), .consumePending(0), .unmask(0)])
        #expect(delivered == [msi(0x34)])
        event.signal()
        #expect(irqfd.take().delivered == [msi(0x34)])
        #expect(throws: IrqFdError.self) { try emulator.event(for: 8) }
    }

    @Test func withoutFreeGsisTheFallbackDelivers() {
        let irqfd = RecordingIrqFd(capacity: 1)
        let fallback = RecordingInjector()
        let emulator = MsixEmulator.make(4, .irqfd(irqfd, fallback: fallback))
        emulator.program(0, msi(0x30), masked: false)
        emulator.program(1, msi(0x31), masked: false)
        emulator.control(enable: true)
        #expect(emulator.routeCount == 1)
        #expect(emulator.lastRouteError == .gsiExhausted(capacity: 1))
        emulator.signal(vector: 0)
        emulator.signal(vector: 1)
        #expect(irqfd.delivered == [msi(0x30)])
        #expect(fallback.take() == [msi(0x31)])
        emulator.setMasked(1, true)
        emulator.signal(vector: 1)
        #expect(emulator.pba() == 0b10)
        emulator.setMasked(1, false)
        #expect(fallback.take() == [msi(0x31)], "masking and pending work the same on the fallback")
    }

    @Test func enablingManyVectorsIsOneBatch() {
        let emulator = MsixEmulator.make(2048, .irqfd(irqfd))
        emulator.control(enable: true, functionMask: true)
        for v in 0..<2048 { emulator.program(v, msi(UInt8(0x30 + v % 200)), masked: false) }
        _ = irqfd.take()
        emulator.control(enable: true, functionMask: false)
        let calls = irqfd.take().calls
        #expect(calls.first == .beginBatch && calls.last == .endBatch)
        #expect(calls.filter { $0 == .beginBatch }.count == 1)
        #expect(calls.count == 2 + 3 * 2048, "new, setMsi, unmask per vector, all inside the one batch")
        #expect(emulator.routeCount == 2048)
    }

    @Test func resetMasksAndClearsEveryRouteInOneBatchAndKeepsThem() {
        emulator.control(enable: true)
        for v in 0..<3 { emulator.program(v, msi(0x30), masked: false) }
        emulator.signal(vector: 0)
        _ = irqfd.take()
        emulator.reset()
        let calls = irqfd.take().calls
        #expect(calls.first == .beginBatch && calls.last == .endBatch && calls.count == 2 + 3 * 3)
        #expect(
            Set(calls.dropFirst().dropLast())
                == Set((0..<3).flatMap { [.mask($0), .consumePending($0), .clearMsi($0)] }))
        #expect(emulator.routeCount == 3 && !emulator.isEnabled && !emulator.isLive(0))
        #expect((0..<8).allSatisfy { emulator.entry($0) == MsixSavedState.Entry() })
        #expect(emulator.pba() == 0)
    }

    @Test func releasingTheEmulatorDropsItsRoutesInOneBatch() {
        var emulator: MsixEmulator? = .make(8, .irqfd(irqfd))
        emulator?.control(enable: true)
        for v in 0..<3 { emulator?.program(v, msi(0x30), masked: false) }
        _ = irqfd.take()
        emulator = nil
        let calls = irqfd.take().calls
        #expect(calls.first == .beginBatch && calls.last == .endBatch && calls.count == 5, "\(calls)")
    }

    @Test func configurationAccessesBySize() {
        emulator.writeCapability(offset: 3, size: 1, value: 0xC0)  // enable + function mask, one byte
        #expect(emulator.isEnabled && emulator.isFunctionMasked)
        #expect(emulator.readCapability(offset: 3, size: 1) == 0xC0)
        #expect(emulator.readCapability(offset: 2, size: 1) == 0x07)
        #expect(emulator.readCapability(offset: 1, size: 1) == 0x00)
        emulator.writeCapability(offset: 2, size: 1, value: 0xFF)  // table size is read-only
        #expect(emulator.messageControl == 0xC007)
        emulator.writeCapability(offset: 0, size: 4, value: 0x4000_0000)  // dword: enable off, mask on
        #expect(!emulator.isEnabled && emulator.isFunctionMasked)
        #expect(emulator.counters.badAccesses == 0)
    }
}

@Suite struct MsixUserspaceTests {
    let injector = RecordingInjector()
    let emulator: MsixEmulator
    init() { emulator = .make(8, .userspace(injector)) }

    @Test func theSameStoryWithoutIrqfd() throws {
        emulator.program(0, msi(0x30), masked: false)
        emulator.signal(vector: 0)
        #expect(injector.take().isEmpty && emulator.pba() == 1)
        emulator.control(enable: true)
        #expect(injector.take() == [msi(0x30)], "pending delivered once when live")
        emulator.signal(vector: 0)
        #expect(injector.take() == [msi(0x30)])
        emulator.setMasked(0, true)
        emulator.signal(vector: 0)
        emulator.signal(vector: 0)
        #expect(injector.take().isEmpty && emulator.pba() == 1)
        emulator.setMasked(0, false)
        #expect(injector.take() == [msi(0x30)], "one pending bit, one interrupt")
        emulator.control(enable: true, functionMask: true)
        emulator.signal(vector: 0)
        emulator.control(enable: true, functionMask: false)
        #expect(injector.take() == [msi(0x30)])
        emulator.control(enable: false)
        emulator.signal(vector: 0)
        #expect(injector.take().isEmpty)
        #expect(emulator.routeCount == 0)
        #expect(throws: IrqFdError.self) { try emulator.event(for: 0) }
    }

    @Test func aFailingInjectorIsCounted() {
        emulator.control(enable: true)
        emulator.program(0, msi(0x30), masked: false)
        injector.failing.store(true, ordering: .relaxed)
        emulator.signal(vector: 0)
        #expect(emulator.counters.deliveryErrors == 1)
        emulator.signal(vector: 9)
        #expect(emulator.counters.badSignals == 1)
    }
}

@Suite struct MsixSaveRestoreTests {
    @Test func aSignalLatchedInAMaskedVectorSurvivesSaveAndRestore() throws {
        let irqfd = RecordingIrqFd()
        let emulator = MsixEmulator.make(8, .irqfd(irqfd))
        emulator.control(enable: true)
        emulator.program(0, msi(0x30), masked: false)
        emulator.program(1, msi(0x31, cpu: 1), masked: false)
        emulator.setMasked(1, true)
        emulator.signal(vector: 1)  // latched in the route's event
        let saved = emulator.save()
        #expect(saved.isPending(1) && !saved.isPending(0))
        #expect(saved.enabled && !saved.functionMasked)
        #expect(
            saved.entries[1]
                == MsixSavedState.Entry(addressLow: UInt32(msi(0x31, cpu: 1).address), data: 0x31, vectorControl: 1))

        let target = RecordingIrqFd()
        let restored = MsixEmulator.make(8, .irqfd(target))
        try restored.restore(saved)
        #expect(
            target.take().calls == [.beginBatch, .newRoute(0), .setMsi(0, msi(0x30)), .unmask(0), .endBatch],
            "only the live vector gets a route")
        #expect(restored.pba() == 0b10)
        #expect(restored.save() == saved)
        restored.setMasked(1, false)
        #expect(target.take().delivered == [msi(0x31, cpu: 1)])
        restored.signal(vector: 0)
        #expect(target.take().delivered == [msi(0x30)])
    }

    @Test func restoreIntoUserspaceDeliveryAndBack() throws {
        let injector = RecordingInjector()
        let emulator = MsixEmulator.make(8, .userspace(injector))
        emulator.program(3, msi(0x33), masked: false)
        emulator.signal(vector: 3)
        emulator.control(enable: true, functionMask: true)
        let saved = emulator.save()
        let irqfd = RecordingIrqFd()
        let restored = MsixEmulator.make(8, .irqfd(irqfd))
        try restored.restore(saved)
        #expect(irqfd.calls.isEmpty, "function masked: nothing is live, nothing to program")
        restored.control(enable: true)
        #expect(irqfd.take().delivered == [msi(0x33)])
    }

    @Test func aStateOfAnotherShapeIsRefused() {
        let small = MsixEmulator.make(4, .irqfd(RecordingIrqFd())).save()
        let emulator = MsixEmulator.make(8, .irqfd(RecordingIrqFd()))
        #expect(throws: MsixError.vectorCountMismatch(saved: 4, emulator: 8)) { try emulator.restore(small) }
        var short = emulator.save()
        short.pendingBits = []
        #expect(throws: MsixError.self) { try emulator.restore(short) }
    }

    @Test func layoutsThatCannotBeEncodedAreRefused() {
        #expect(MsixLayout(vectorCount: 0) == nil)
        #expect(MsixLayout(vectorCount: 2049) == nil)
        #expect(MsixLayout(vectorCount: 2048, pbaOffset: 0x4000) == nil, "table and PBA overlap")
        #expect(MsixLayout(vectorCount: 8, tableOffset: 4) == nil)
        #expect(MsixLayout(vectorCount: 2048)?.pbaSize == 256)
        #expect(MsixLayout(vectorCount: 65)?.pbaSize == 16)
    }
}
