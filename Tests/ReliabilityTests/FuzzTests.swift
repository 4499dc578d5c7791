#if os(Linux)
import Foundation
import IrqFdCore
import MSIX
import KVMTestSupport
import PCI
import TestSupport
import Testing
import TinyVM

/// Random accesses of every size and alignment to the PCI configuration
/// space (through the bus's ports, as a guest's IN/OUT arrive), to the test
/// device's BARs (as MMIO exits arrive, 1 to 8 bytes at any address around
/// them), and to the MSI-X emulator's own entry points (any offset, any size,
/// any BAR), mixed with device signals, doorbells, bursts, save/restore and
/// reset, against a running guest. After every step the emulator's state
/// must be coherent; at the end the device is reset, programmed properly, and
/// must still deliver an interrupt to the guest.
///
/// MSI data dwords keep a fixed delivery mode and a vector the guest handles
/// (0x20..0xFF), so that a fuzzed INIT, SMI or exception vector cannot kill
/// the guest that proves the VMM still works; addresses, control words,
/// offsets, sizes and every other value are unrestricted.
///
/// Runs the regression corpus (seeds that once found a problem, and fixed
/// seeds), then random seeds for `IRQFD_FUZZ_SECONDS` (default 3) per
/// delivery path. `IRQFD_FUZZ_SEED` repeats a random run.
@Suite(needsKVM, .serialized) struct FuzzTests {
    static let seconds = environmentCount("IRQFD_FUZZ_SECONDS", default: 3)
    static let stepsPerSeed = 2_000
    /// Seeds run every time: fixed ones, and any that ever found a crash.
    static let corpus: [UInt64] = [1, 2, 3, 0xDEAD_BEEF]

    @Test(arguments: InterruptDelivery.allCases)
    func randomAccessesNeverCrashAndTheDeviceStillWorks(_ delivery: InterruptDelivery) throws {
        let guest = try FuzzRig(delivery: delivery)
        var steps = 0
        for seed in Self.corpus {
            steps += guest.fuzz(seed: seed, steps: Self.stepsPerSeed)
        }
        var seed = announcedSeed("IRQFD_FUZZ_SEED", for: "MSI-X/PCI fuzz (\(delivery))")
        let deadline = ContinuousClock.now + .seconds(Self.seconds)
        var seeds = Self.corpus.count
        while ContinuousClock.now < deadline {
            steps += guest.fuzz(seed: seed, steps: Self.stepsPerSeed)
            seed &+= 1
            seeds += 1
        }
        let counters = guest.device.emulator.counters
        print(
            "MSI-X/PCI fuzz (\(delivery)): \(steps) accesses from \(seeds) seeds; emulator: \(counters); device ignored \(guest.device.ignoredAccesses)"
        )
        #expect(counters.badAccesses > 0, "the fuzzer reached the emulator's checks")
        try guest.expectStillDelivers()
    }
}

/// Crashers the fuzzer found, kept as exhaustive sweeps: every offset and
/// size (including ones no bus makes) of the device's configuration space
/// and of the first bytes of each BAR, the table and the PBA.
@Suite(needsKVM, .serialized) struct FuzzRegressionTests {
    /// Found by seed 1: `configRead(offset: 0x08, size: 5)` overflowed the
    /// read mask (`1 << 40` in 32 bits) and trapped.
    @Test func configurationAccessesOfEverySizeAtEveryOffset() throws {
        let rig = try FuzzRig(delivery: .irqfd)
        for offset in -8...300 {
            for size in 0...8 {
                _ = rig.device.configRead(offset: offset, size: size)
                // Leave the command register and BARs alone: the device must still decode below.
                if ![0x04, 0x05, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17].contains(offset) {
                    rig.device.configWrite(offset: offset, size: size, value: 0xFFFF_FFFF)
                }
            }
        }
        try rig.expectStillDelivers()
    }

    @Test func memoryAccessesOfEverySizeAroundEveryRegisterAndTheTables() throws {
        let rig = try FuzzRig(delivery: .irqfd)
        let places: [UInt64] = [
            MsixTestDevice.registersBase, MsixTestDevice.msixBase,
            MsixTestDevice.msixBase + UInt64(16 * (FuzzRig.vectors - 1)),
            MsixTestDevice.msixBase + UInt64(MsixTestDevice.pbaOffset),
            MsixTestDevice.registersBase + MsixTestDevice.registersSize - 8,
            MsixTestDevice.msixBase + MsixTestDevice.msixSize - 8,
        ]
        for base in places {
            for address in base - 8..<base + 0x28 {
                for size in 0...8 {
                    _ = rig.device.read(address: address, size: size)
                    if address != MsixTestDevice.registersBase + 0x0C {  // BURST of up to 65535 signals
                        rig.device.write(address: address, size: size, value: 0x0000_0020_0000_0020)
                    }
                }
            }
        }
        try rig.expectStillDelivers()
    }
}

/// A counting guest with the test device, and the fuzzer that attacks it.
final class FuzzRig {
    let guest: CountingGuest
    let device: MsixTestDevice
    var vm: TinyVM { guest.vm }
    static let vectors = 16

    init(delivery: InterruptDelivery) throws {
        guest = try CountingGuest(
            cpus: 2,
            plugging: { vm in
                _ = try MsixTestDevice.attach(to: vm, vectors: Self.vectors, delivery: delivery)
            })
        device = try #require(guest.vm.pci.function(device: MsixTestDevice.slot) as? MsixTestDevice)
    }

    /// `steps` random accesses from `seed`; returns `steps`. Checks the
    /// emulator's invariants after each.
    func fuzz(seed: UInt64, steps: Int) -> Int {
        var random = SplitMix64(seed: seed)
        for step in 0..<steps {
            let what = Int.random(in: 0..<100, using: &random)
            switch what {
            case 0..<30: mmio(&random)
            case 30..<50: configThroughPorts(&random)
            case 50..<62: configDirect(&random)
            case 62..<78: emulatorDirect(&random)
            case 78..<88: device.emulator.signal(vector: Int.random(in: -2...(Self.vectors + 2), using: &random))
            case 88..<92:
                let v = Int.random(in: -1...Self.vectors, using: &random)
                device.ring(vector: v, count: Int.random(in: 0...3, using: &random))
            case 92..<95:
                let saved = device.emulator.save()
                try? device.emulator.restore(saved)
            case 95..<97:
                // A restore of a random (often malformed) state is refused or applied, never a crash.
                let entries = (0..<Int.random(in: Self.vectors - 1...Self.vectors + 1, using: &random)).map { _ in
                    MsixSavedState.Entry(
                        addressLow: random.next32(), addressHigh: random.next32(),
                        data: FuzzRig.tame(data: random.next32()), vectorControl: random.next32())
                }
                let state = MsixSavedState(
                    enabled: Bool.random(using: &random), functionMasked: Bool.random(using: &random), entries: entries,
                    pendingBits: (0..<Int.random(in: 0...2, using: &random)).map { _ in random.next() })
                try? device.emulator.restore(state)
            case 97:
                device.emulator.reset()
            default:
                _ = try? device.emulator.event(for: Int.random(in: -1...Self.vectors, using: &random))
            }
            if let problem = incoherence() {
                Issue.record("seed \(seed), step \(step): \(problem)")
                return step + 1
            }
        }
        return steps
    }

    /// An MMIO access of 1 to 8 bytes at any address in or around the BARs.
    private func mmio(_ random: inout SplitMix64) {
        let base = Bool.random(using: &random) ? MsixTestDevice.registersBase : MsixTestDevice.msixBase
        let span = base == MsixTestDevice.registersBase ? MsixTestDevice.registersSize : MsixTestDevice.msixSize
        var address = base &+ UInt64.random(in: 0..<span + 64, using: &random) &- 32
        if Int.random(in: 0..<4, using: &random) == 0 {
            // Near the interesting places: table entries, the PBA, the registers.
            address =
                base + UInt64.random(in: 0..<0x40, using: &random)
                + (Bool.random(using: &random) ? UInt64(MsixTestDevice.pbaOffset) : 0)
        }
        let size = Int.random(in: 1...8, using: &random)
        if Bool.random(using: &random) {
            _ = device.read(address: address, size: size)
        } else {
            var value = random.next()
            if base == MsixTestDevice.msixBase {
                value = tameTableWrite(address: address &- base, size: size, value: value)
            }
            if base == MsixTestDevice.registersBase, address == base + 0x0C {
                value &= 0x000F_FFFF  // BURST: at most 15 signals, not 65535
            }
            device.write(address: address, size: size, value: value)
        }
    }

    /// A configuration access through 0xCF8/0xCFC as a guest makes it.
    private func configThroughPorts(_ random: inout SplitMix64) {
        let bus = vm.pci
        let port = UInt16.random(in: PCIBus.ports, using: &random)
        let size = [1, 2, 4, 3][Int.random(in: 0..<4, using: &random)]
        if Int.random(in: 0..<3, using: &random) == 0 {
            // Select a register: mostly device 1 (ours), sometimes anything.
            let address: UInt32 =
                Bool.random(using: &random)
                ? PCIBus.configAddress(device: MsixTestDevice.slot, offset: Int.random(in: 0..<256, using: &random))
                : random.next32()
            bus.write(port: PCIBus.addressPort, size: 4, value: address)
        } else if Bool.random(using: &random) {
            _ = bus.read(port: port, size: size)
        } else {
            bus.write(port: port, size: size, value: random.next32())
        }
    }

    /// A configuration access handed straight to the device, any offset and size.
    private func configDirect(_ random: inout SplitMix64) {
        let offset = Int.random(in: -8...300, using: &random)
        let size = Int.random(in: 0...8, using: &random)
        if Bool.random(using: &random) {
            _ = device.configRead(offset: offset, size: size)
        } else {
            device.configWrite(offset: offset, size: size, value: random.next32())
        }
    }

    /// The emulator's entry points with any offset, size and BAR.
    private func emulatorDirect(_ random: inout SplitMix64) {
        let emulator = device.emulator
        let offset = Bool.random(using: &random) ? UInt64.random(in: 0..<0x200, using: &random) : random.next()
        let size = Int.random(in: 0...16, using: &random)
        switch Int.random(in: 0..<8, using: &random) {
        case 0: _ = emulator.readTable(offset: offset, size: size)
        case 1:
            emulator.writeTable(
                offset: offset, size: size, value: tameTableWrite(address: offset, size: size, value: random.next()))
        case 2: _ = emulator.readPBA(offset: offset, size: size)
        case 3: emulator.writePBA(offset: offset, size: size, value: random.next())
        case 4: _ = emulator.readCapability(offset: Int.random(in: -4...16, using: &random), size: size)
        case 5:
            emulator.writeCapability(
                offset: Int.random(in: -4...16, using: &random), size: size, value: random.next32())
        case 6: _ = emulator.read(bar: Int.random(in: -1...6, using: &random), offset: offset, size: size)
        default:
            emulator.write(
                bar: Int.random(in: -1...6, using: &random), offset: offset, size: size,
                value: tameTableWrite(address: offset, size: size, value: random.next()))
        }
    }

    /// Keeps the MSI data bytes a write covers deliverable to the guest's
    /// handlers: vector 0x20..0xFF, delivery mode fixed.
    private func tameTableWrite(address: UInt64, size: Int, value: UInt64) -> UInt64 {
        var value = value
        for byte in 0..<min(size, 8) {
            let offsetInEntry = (address &+ UInt64(byte)) % 16
            let shift = UInt64(8 * byte)
            switch offsetInEntry {
            case 8: if (value >> shift) & 0xFF < 0x20 { value |= 0x20 << shift }
            case 9: value &= ~(0x07 << shift)
            default: break
            }
        }
        return value
    }

    static func tame(data: UInt32) -> UInt32 {
        var data = data & ~0x700
        if data & 0xFF < 0x20 { data |= 0x20 }
        return data
    }

    /// What must hold after any access, or a description of what does not.
    func incoherence() -> String? {
        let emulator = device.emulator
        let control = emulator.messageControl
        if Int(control & 0x7FF) != Self.vectors - 1 { return "Message Control's table size changed: \(control)" }
        if (control & 0x8000 != 0) != emulator.isEnabled || (control & 0x4000 != 0) != emulator.isFunctionMasked {
            return "Message Control \(control) disagrees with enable/function mask"
        }
        if emulator.counters.routeErrors == 0 {
            for v in 0..<Self.vectors {
                let wants =
                    emulator.isBusMasterEnabled && emulator.isEnabled && !emulator.isFunctionMasked
                    && !emulator.entry(v).isMasked
                if emulator.isLive(v) != wants { return "vector \(v) live \(emulator.isLive(v)), should be \(wants)" }
            }
        }
        let lastWord = UInt64((Self.vectors - 1) / 64 * 8)
        let bitsUsed = Self.vectors - Int(lastWord) * 8
        let pba = emulator.readPBA(offset: lastWord, size: 8)
        if bitsUsed < 64, pba >> UInt64(bitsUsed) != 0 { return "PBA bits beyond the table are set: \(pba)" }
        return nil
    }

    /// The VMM survived: reset, program vector 3 to vCPU 1, ring it, and the guest takes it.
    func expectStillDelivers(sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(
            !vm.hasEnded, "the guest survived the fuzzing: \(vm.hasEnded ? "\(vm.wait())" : "")",
            sourceLocation: sourceLocation)
        device.waitUntilIdle()
        device.configWrite(offset: 0x04, size: 2, value: 0x0006)
        device.configWrite(offset: 0x10, size: 4, value: UInt32(MsixTestDevice.registersBase))
        device.configWrite(offset: 0x14, size: 4, value: UInt32(MsixTestDevice.msixBase))
        device.emulator.reset()
        let msi = MsiMessage(destination: 1, vector: 0xE3)
        let entry = MsixTestDevice.msixBase + 16 * 3
        device.write(address: entry, size: 4, value: msi.address)
        device.write(address: entry + 4, size: 4, value: 0)
        device.write(address: entry + 8, size: 4, value: UInt64(msi.data))
        device.write(address: entry + 12, size: 4, value: 0)
        device.configWrite(offset: MsixTestDevice.capabilityOffset + 2, size: 2, value: 0x8000)
        let before = guest.count(cpu: 1, vector: 0xE3)
        device.write(address: MsixTestDevice.registersBase + 0x08, size: 4, value: 3)
        #expect(
            guest.waitFor(cpu: 1, vector: 0xE3, count: before + 1), "the device still delivers",
            sourceLocation: sourceLocation)
    }
}

extension SplitMix64 {
    mutating func next32() -> UInt32 { UInt32(truncatingIfNeeded: next()) }
}
#endif
