#if os(Linux)
import CReliability
import Foundation
import IrqFdCore
import MSIX
import PCI
import Synchronization
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// Where the lossless-stress guest (seq_stress.S) keeps its words.
enum SequenceLayout {
    static func ready(cpu: Int) -> UInt64 { 0x500 + 4 * UInt64(cpu) }
    /// The device writes its n-th sequence number of vector `i` here before signalling it.
    static func sequence(_ i: Int) -> UInt64 { 0x9000 + 4 * UInt64(i) }
    /// Non-zero while the host holds vector `i` masked (set after a fence, cleared before unmasking).
    static func masked(_ i: Int) -> UInt64 { 0x9400 + 4 * UInt64(i) }
    static func highest(cpu: Int, _ i: Int) -> UInt64 { 0xA000 + 0x400 * UInt64(cpu) + 4 * UInt64(i) }
    static func violations(cpu: Int, _ i: Int) -> UInt64 { 0xB000 + 0x400 * UInt64(cpu) + 4 * UInt64(i) }
    static func runs(cpu: Int, _ i: Int) -> UInt64 { 0xC000 + 0x400 * UInt64(cpu) + 4 * UInt64(i) }
    /// The fence: IDT vector 0x21 (index 33), below every device vector's priority class.
    static let fenceVector: UInt8 = 0x21
    static let fenceIndex = 33

    static var image: [UInt8] {
        var length = 0
        let start = guest_seq_stress_image(&length)
        return Array(UnsafeBufferPointer(start: start, count: length))
    }
}

/// A guest, the PCI test device in one delivery mode, and the host playing
/// the guest's driver: it programs the MSI-X table through the device's BAR
/// exactly as guest MMIO writes would arrive.
final class StressRig {
    let vm: TinyVM
    let device: MsixTestDevice
    static let vectors = 4
    static let cpus = 2
    /// The host's copy of what it programmed.
    private(set) var destination: [UInt32] = (0..<StressRig.vectors).map { UInt32($0 % 2) }
    private(set) var highVector: [Bool] = Array(repeating: false, count: StressRig.vectors)
    private(set) var entryMasked: [Bool] = Array(repeating: false, count: StressRig.vectors)
    private(set) var functionMasked = false
    private(set) var fences = 0

    init(delivery: InterruptDelivery) throws {
        vm = try TinyVM(.init(cpus: Self.cpus))
        try vm.load(SequenceLayout.image)
        device = try MsixTestDevice.attach(to: vm, vectors: Self.vectors, delivery: delivery)
        vm.start()
        let ready = vm.waitUntil(timeout: .seconds(20)) {
            (0..<Self.cpus).allSatisfy { self.vm.memory.read32(at: SequenceLayout.ready(cpu: $0)) == 1 }
        }
        guard ready else { throw CountingGuest.NotReady(outcome: "stress guest not ready") }
        for i in 0..<Self.vectors {
            writeEntry(i, 0, UInt32(message(i).address & 0xFFFF_FFFF))
            writeEntry(i, 1, 0)
            writeEntry(i, 2, message(i).data)
            writeEntry(i, 3, 0)
        }
        device.configWrite(offset: MsixTestDevice.capabilityOffset + 2, size: 2, value: 0x8000)
    }

    deinit {
        vm.stop()
        vm.wait()
    }

    func message(_ i: Int) -> MsiMessage {
        MsiMessage(destination: destination[i], vector: UInt8((highVector[i] ? 0x80 : 0x40) + i))
    }

    func isLive(_ i: Int) -> Bool { !functionMasked && !entryMasked[i] }

    private func writeEntry(_ i: Int, _ dword: Int, _ value: UInt32) {
        device.write(address: MsixTestDevice.msixBase + UInt64(16 * i + 4 * dword), size: 4, value: UInt64(value))
    }

    private func setFlag(_ i: Int, _ masked: Bool) { vm.memory.write32(masked ? 1 : 0, at: SequenceLayout.masked(i)) }

    /// After this returns, every interrupt injected before it was called has
    /// been handled: a fence MSI of the lowest priority class goes to every
    /// vCPU, and the local APIC serves higher classes first.
    func fence() {
        let before = (0..<Self.cpus).map {
            vm.memory.read32(at: SequenceLayout.runs(cpu: $0, SequenceLayout.fenceIndex))
        }
        for cpu in 0..<Self.cpus {
            let fence = MsiMessage(destination: UInt32(cpu), vector: SequenceLayout.fenceVector)
            _ = try? vm.vm.signalMsi(address: fence.address, data: fence.data)
        }
        let done = vm.waitUntil(timeout: .seconds(10)) {
            (0..<Self.cpus).allSatisfy {
                self.vm.memory.read32(at: SequenceLayout.runs(cpu: $0, SequenceLayout.fenceIndex)) > before[$0]
            }
        }
        if !done { Issue.record("the fence interrupt did not arrive within 10 s: the guest is stuck") }
        fences += 1
    }

    func mask(_ i: Int) {
        guard !entryMasked[i] else { return }
        let wasLive = isLive(i)
        writeEntry(i, 3, 1)
        entryMasked[i] = true
        if wasLive {
            fence()
            setFlag(i, true)
        }
    }

    func unmask(_ i: Int) {
        guard entryMasked[i] else { return }
        entryMasked[i] = false
        if isLive(i) { setFlag(i, false) }
        writeEntry(i, 3, 0)
    }

    func maskFunction() {
        guard !functionMasked else { return }
        let live = (0..<Self.vectors).filter(isLive)
        device.configWrite(offset: MsixTestDevice.capabilityOffset + 2, size: 2, value: 0xC000)
        functionMasked = true
        fence()
        for i in live { setFlag(i, true) }
    }

    func unmaskFunction() {
        guard functionMasked else { return }
        functionMasked = false
        for i in 0..<Self.vectors where isLive(i) { setFlag(i, false) }
        device.configWrite(offset: MsixTestDevice.capabilityOffset + 2, size: 2, value: 0x8000)
    }

    /// Moves vector `i` to the other vCPU (the address's destination ID).
    func retarget(_ i: Int) {
        destination[i] ^= 1
        writeEntry(i, 0, UInt32(message(i).address & 0xFFFF_FFFF))
    }

    /// Flips vector `i` between IDT vectors 0x40 + i and 0x80 + i (the data).
    func changeData(_ i: Int) {
        highVector[i].toggle()
        writeEntry(i, 2, message(i).data)
    }

    func readPBA() -> UInt64 {
        device.read(address: MsixTestDevice.msixBase + UInt64(MsixTestDevice.pbaOffset), size: 8)
    }

    /// The highest sequence number any vCPU's handler saw for `i`.
    func seen(_ i: Int) -> UInt32 {
        (0..<Self.cpus).map { vm.memory.read32(at: SequenceLayout.highest(cpu: $0, i)) }.max() ?? 0
    }

    func violations(_ i: Int) -> UInt32 {
        (0..<Self.cpus).reduce(0) { $0 + vm.memory.read32(at: SequenceLayout.violations(cpu: $1, i)) }
    }

    func handled(_ i: Int) -> UInt32 {
        (0..<Self.cpus).reduce(0) { $0 + vm.memory.read32(at: SequenceLayout.runs(cpu: $1, i)) }
    }
}

/// The device: writes vector i's next sequence number to guest memory, then
/// signals i, as fast as it can, from its own thread.
final class SequenceDevice: Sendable {
    let last: Mutex<[UInt32]>
    let finished = Atomic<Bool>(false)

    /// Starts signalling, continuing each vector's sequence from `from`.
    init(rig: StressRig, signals: Int, seed: UInt64, from: [UInt32]) {
        last = Mutex(from)
        let memory = rig.vm.memory
        let emulator = rig.device.emulator
        let thread = Thread { [self] in
            var random = SplitMix64(seed: seed)
            var sequence = from
            for _ in 0..<signals {
                let i = Int.random(in: 0..<StressRig.vectors, using: &random)
                sequence[i] &+= 1
                memory.write32(sequence[i], at: SequenceLayout.sequence(i))
                emulator.signal(vector: i)
            }
            last.withLock { $0 = sequence }
            finished.store(true, ordering: .releasing)
        }
        thread.name = "sequence device"
        thread.start()
    }

    var isFinished: Bool { finished.load(ordering: .acquiring) }
}

/// The lossless stress: while the device signals as fast as it can, the host
/// masks, unmasks, retargets between two vCPUs, changes data and reads the
/// PBA at random. At four checkpoints (device quiet, every vector live) the
/// guest must have seen every vector's last sequence number, and no handler
/// may ever have run for a vector while the host held it masked (checked by
/// the guest itself, against a flag the host sets only after a fence).
/// `IRQFD_STRESS_SIGNALS` signals per delivery path (default 100,000);
/// `IRQFD_STRESS_SEED` repeats a run.
@Suite(needsKVM, .serialized) struct LosslessStressTests {
    static let signals = environmentCount("IRQFD_STRESS_SIGNALS", default: 100_000)
    static let checkpoints = 4

    /// What the guest's driver does meanwhile, to vector `i` or the function:
    /// each operation's share of the draws in percent, and its name in the tally.
    static let operations: [(percent: Int, name: String, run: @Sendable (StressRig, Int) -> Void)] = [
        (25, "mask", { rig, i in rig.mask(i) }),
        (25, "unmask", { rig, i in rig.unmask(i) }),
        (12, "retarget", { rig, i in rig.retarget(i) }),
        (12, "change data", { rig, i in rig.changeData(i) }),
        (16, "read PBA", { rig, _ in _ = rig.readPBA() }),
        (5, "function mask", { rig, _ in rig.maskFunction() }),
        (5, "function unmask", { rig, _ in rig.unmaskFunction() }),
    ]

    @Test(arguments: InterruptDelivery.allCases)
    func noInterruptIsLostAndNoneArrivesWhileMasked(_ delivery: InterruptDelivery) throws {
        let seed = announcedSeed("IRQFD_STRESS_SEED", for: "lossless stress (\(delivery))")
        var random = SplitMix64(seed: seed)
        let rig = try StressRig(delivery: delivery)
        let start = ContinuousClock.now
        var operations = [String: Int]()
        var previous = [UInt32](repeating: 0, count: StressRig.vectors)
        for checkpoint in 0..<Self.checkpoints {
            let device = SequenceDevice(
                rig: rig, signals: Self.signals / Self.checkpoints, seed: seed &+ UInt64(checkpoint), from: previous)
            while !device.isFinished {
                let i = Int.random(in: 0..<StressRig.vectors, using: &random)
                var roll = Int.random(in: 0..<100, using: &random)
                let operation = Self.operations.first { operation in
                    roll -= operation.percent
                    return roll < 0
                }!
                operation.run(rig, i)
                operations[operation.name, default: 0] += 1
            }
            // Quiet device, every vector live: each must reach its last number.
            rig.unmaskFunction()
            for i in 0..<StressRig.vectors { rig.unmask(i) }
            let last = device.last.withLock { $0 }
            previous = last
            let caughtUp = rig.vm.waitUntil(timeout: .seconds(10)) {
                (0..<StressRig.vectors).allSatisfy { rig.seen($0) == last[$0] }
            }
            #expect(
                caughtUp,
                "\(delivery), checkpoint \(checkpoint + 1): last numbers \(last), guest saw \((0..<StressRig.vectors).map(rig.seen)), PBA \(rig.readPBA()), seed \(seed)"
            )
            if !caughtUp { break }
        }
        let elapsed = ContinuousClock.now - start
        let violations = (0..<StressRig.vectors).map(rig.violations)
        let handled = (0..<StressRig.vectors).map(rig.handled)
        let counters = rig.device.emulator.counters
        print(
            "lossless stress (\(delivery)): \(Self.signals) signals in \(elapsed), \(handled.reduce(0, +)) handler runs \(handled), "
                + "host operations \(operations.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")), "
                + "\(rig.fences) fences, handler runs while masked \(violations); emulator: \(counters)")
        #expect(
            violations.allSatisfy { $0 == 0 }, "\(delivery): handlers ran while masked: \(violations), seed \(seed)")
        #expect(counters.routeErrors == 0 && counters.deliveryErrors == 0, "\(delivery): \(counters)")
        #expect(!rig.vm.hasEnded, "the guest survived: \(rig.vm.hasEnded ? "\(rig.vm.wait())" : "")")
    }
}
#endif
