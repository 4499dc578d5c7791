import IrqFdCore
import MSIX
import PropertyBased
import TestSupport
import Testing

/// The PCI spec's MSI-X (6.8.2), written as plainly as possible: a table, two
/// control bits and a pending bit per vector. No routes, no latching: a signal
/// on a vector that is not live sets its pending bit; a vector that becomes
/// live with its bit set sends one message and clears it. The emulator must
/// agree with this on every read and every delivered interrupt.
struct SpecModel {
    struct Entry: Equatable {
        var addressLow: UInt32 = 0
        var addressHigh: UInt32 = 0
        var data: UInt32 = 0
        var masked = true
    }
    let vectorCount: Int
    var enabled = false
    var functionMasked = false
    var entries: [Entry]
    var pending: [Bool]
    var delivered: [MsiMessage] = []
    var badAccesses = 0

    init(vectorCount: Int) {
        self.vectorCount = vectorCount
        entries = Array(repeating: Entry(), count: vectorCount)
        pending = Array(repeating: false, count: vectorCount)
    }

    var tableBytes: UInt64 { UInt64(16 * vectorCount) }
    var pbaBytes: UInt64 { UInt64((vectorCount + 63) / 64 * 8) }

    func isLive(_ v: Int) -> Bool { enabled && !functionMasked && !entries[v].masked }
    func message(_ v: Int) -> MsiMessage {
        MsiMessage(address: UInt64(entries[v].addressHigh) << 32 | UInt64(entries[v].addressLow), data: entries[v].data)
    }

    /// Sends vector `v`'s message, unless its address is not an x86 interrupt address.
    mutating func send(_ v: Int) {
        let m = message(v)
        if m.address >> 20 == 0xFEE { delivered.append(m) }
    }

    /// Applies a change, then lets every vector that became live send its pending message.
    mutating func change(_ body: (inout SpecModel) -> Void) {
        let before = (0..<vectorCount).map(isLive)
        body(&self)
        for v in 0..<vectorCount where !before[v] && isLive(v) && pending[v] {
            pending[v] = false
            send(v)
        }
    }

    mutating func signal(_ v: Int) {
        if isLive(v) { send(v) } else { pending[v] = true }
    }

    /// Table and PBA: DWORD or QWORD, naturally aligned, inside the structure.
    mutating func memoryAccessOK(_ offset: UInt64, _ size: Int, _ length: UInt64) -> Bool {
        let ok =
            (size == 4 || size == 8) && offset % UInt64(size) == 0 && offset < length && length - offset >= UInt64(size)
        if !ok { badAccesses += 1 }
        return ok
    }

    mutating func writeTable(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        guard memoryAccessOK(offset, size, tableBytes) else { return }
        change { m in
            for i in 0..<size / 4 {
                let dword = UInt32(truncatingIfNeeded: value >> (32 * UInt64(i)))
                let v = Int(offset / 16)
                switch Int(offset % 16) / 4 + i {
                case 0:
                    if dword & 3 != 0 { m.badAccesses += 1 }
                    m.entries[v].addressLow = dword & ~3
                case 1: m.entries[v].addressHigh = dword
                case 2: m.entries[v].data = dword
                default:
                    if dword > 1 { m.badAccesses += 1 }
                    m.entries[v].masked = dword & 1 == 1
                }
            }
        }
    }

    mutating func readTable(_ offset: UInt64, _ size: Int) -> UInt64 {
        guard memoryAccessOK(offset, size, tableBytes) else { return 0 }
        var value: UInt64 = 0
        for i in 0..<size / 4 {
            let e = entries[Int(offset / 16)]
            let fields = [e.addressLow, e.addressHigh, e.data, e.masked ? 1 : 0]
            value |= UInt64(fields[Int(offset % 16) / 4 + i]) << (32 * UInt64(i))
        }
        return value
    }

    mutating func readPBA(_ offset: UInt64, _ size: Int) -> UInt64 {
        guard memoryAccessOK(offset, size, pbaBytes) else { return 0 }
        var value: UInt64 = 0
        for bit in 0..<(size * 8) where Int(offset) * 8 + bit < vectorCount && pending[Int(offset) * 8 + bit] {
            value |= 1 << UInt64(bit)
        }
        return value
    }

    mutating func writePBA(_ offset: UInt64, _ size: Int) {
        // Read-only: a well-formed write is ignored and counted as a PBA write.
        if memoryAccessOK(offset, size, pbaBytes) { badAccesses += 1 }
    }

    var capabilityBytes: [UInt8] {
        let control = UInt16(vectorCount - 1) | (functionMasked ? 0x4000 : 0) | (enabled ? 0x8000 : 0)
        return [0x11, 0, UInt8(control & 0xFF), UInt8(control >> 8), 0x01, 0, 0, 0, 0x01, 0x80, 0, 0]
    }

    mutating func capabilityAccessOK(_ offset: Int, _ size: Int) -> Bool {
        // Any byte enables within one DWORD (PCI Local Bus spec 3.2.2.3.2).
        let ok = [1, 2, 4].contains(size) && offset >= 0 && offset % 4 + size <= 4 && offset + size <= 12
        if !ok { badAccesses += 1 }
        return ok
    }

    mutating func readCapability(_ offset: Int, _ size: Int) -> UInt32 {
        guard capabilityAccessOK(offset, size) else { return 0 }
        let bytes = capabilityBytes
        return (0..<size).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * UInt32($1)) }
    }

    mutating func writeCapability(_ offset: Int, _ size: Int, _ value: UInt32) {
        guard capabilityAccessOK(offset, size) else { return }
        for i in 0..<size where offset + i == 3 {
            let byte = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            if byte & 0x38 != 0 { badAccesses += 1 }
            change { m in
                m.enabled = byte & 0x80 != 0
                m.functionMasked = byte & 0x40 != 0
            }
        }
    }

    /// Everything back to the reset state; what was counted stays counted.
    mutating func reset() {
        let counted = badAccesses
        self = SpecModel(vectorCount: vectorCount)
        badAccesses = counted
    }
}

/// One step of a random run, decoded from a random word so that the
/// property library can generate and shrink runs as arrays of integers.
enum Step: CustomStringConvertible {
    case writeTable(offset: UInt64, size: Int, value: UInt64)
    case readTable(offset: UInt64, size: Int)
    case writeCapability(offset: Int, size: Int, value: UInt32)
    case readCapability(offset: Int, size: Int)
    case readPBA(offset: UInt64, size: Int)
    case writePBA(offset: UInt64, size: Int)
    case signal(Int)
    case signalEvent(Int)
    case saveAndRestore
    case reset

    init(_ w: UInt64, vectorCount n: Int) {
        let r = w >> 8
        let v = Int(r % UInt64(n))
        let pick = (r >> 12) & 0xFFFF
        func size(_ x: UInt64) -> Int { [4, 4, 4, 8, 8, 1, 2, 3][Int(x % 8)] }
        switch w % 32 {
        case 0..<9:
            let field = Int(pick % 4)
            let s = size(pick >> 2)
            var offset = UInt64(16 * v + 4 * field)
            if s == 8 { offset &= ~7 }
            if pick >> 5 & 31 == 0 { offset += 1 + pick >> 10 % 3 }  // now and then misaligned
            if pick >> 5 & 31 == 1 { offset = UInt64(16 * n) + UInt64(4 * field) }  // beyond the table
            let destination = UInt64(pick >> 7 % 3)
            let address: UInt64 =
                pick >> 9 & 7 == 0 ? 0xDEAD_0000 : 0xFEE0_0000 | destination << 12 | (pick >> 12 & 1 == 0 ? 0 : 3)
            let data = UInt64(0x30 + (pick >> 7) % 4)
            let control: UInt64 = pick >> 10 & 15 == 0 ? 0xFFFF_FFFF : pick >> 9 & 1
            let value: UInt64 =
                switch (offset % 16 / 4, s) {
                case (0, 8): address
                case (2, 8): data | control << 32
                case (0, _): address
                case (1, _): pick >> 8 & 15 == 0 ? 1 : 0
                case (2, _): data
                default: control
                }
            self = .writeTable(offset: offset, size: s, value: value)
        case 9, 10:
            self = .readTable(offset: UInt64(16 * v) + (pick % 16) & ~3, size: size(pick >> 4))
        case 11..<14:
            let s = [2, 2, 1, 4, 1, 2][Int(pick % 6)]
            let offset = s == 4 ? 0 : s == 2 ? (pick >> 3 & 7 == 0 ? 1 : 2) : Int(2 + pick >> 3 % 2)
            let control = UInt32(pick >> 6 & 3) << 14 | (pick >> 8 & 15 == 0 ? 0x3800 : 0)
            let value = s == 4 ? control << 16 : offset == 3 ? control >> 8 : control
            self = .writeCapability(offset: offset, size: s, value: value)
        case 14:
            self = .readCapability(offset: Int(pick % 13), size: [1, 2, 4, 3][Int(pick >> 4 % 4)])
        case 15, 16, 17:
            self = .readPBA(
                offset: UInt64(8 * (pick % UInt64((n + 63) / 64 + 1))) + (pick >> 8 & 7 == 0 ? 4 : 0),
                size: [8, 4][Int(pick >> 4 % 2)])
        case 18:
            self = .writePBA(offset: 0, size: [8, 4, 2][Int(pick % 3)])
        case 19..<26:
            self = .signal(v)
        case 26..<29:
            self = .signalEvent(v)
        case 29, 30:
            self = .saveAndRestore
        default:
            self = pick % 4 == 0 ? .reset : .signal(v)
        }
    }

    var description: String {
        switch self {
        case .writeTable(let o, let s, let v): "table[\(o)]/\(s) = 0x\(String(v, radix: 16))"
        case .readTable(let o, let s): "read table[\(o)]/\(s)"
        case .writeCapability(let o, let s, let v): "cap[\(o)]/\(s) = 0x\(String(v, radix: 16))"
        case .readCapability(let o, let s): "read cap[\(o)]/\(s)"
        case .readPBA(let o, let s): "read PBA[\(o)]/\(s)"
        case .writePBA(let o, let s): "PBA[\(o)]/\(s) = ~0"
        case .signal(let v): "signal \(v)"
        case .signalEvent(let v): "signal \(v)'s event"
        case .saveAndRestore: "save + restore"
        case .reset: "reset"
        }
    }
}

/// The emulator under test, with what it delivered collected from whichever
/// partition or injector it currently uses.
final class EmulatorUnderTest {
    let vectorCount: Int
    let useIrqfd: Bool
    var irqfd = RecordingIrqFd()
    let injector = RecordingInjector()
    var emulator: MsixEmulator
    var retiredBadAccesses = 0

    init(vectorCount: Int, useIrqfd: Bool) {
        self.vectorCount = vectorCount
        self.useIrqfd = useIrqfd
        emulator = MsixEmulator(
            layout: MsixLayout(vectorCount: vectorCount)!, delivery: useIrqfd ? .irqfd(irqfd) : .userspace(injector))
    }

    func takeDelivered() -> [MsiMessage] { useIrqfd ? irqfd.take().delivered : injector.take() }

    var badAccesses: Int { retiredBadAccesses + emulator.counters.badAccesses }

    /// Runs one step on both; returns a description of the first disagreement.
    func step(_ step: Step, _ model: inout SpecModel) -> String? {
        var got: UInt64?
        var want: UInt64?
        switch step {
        case .writeTable(let o, let s, let v):
            emulator.writeTable(offset: o, size: s, value: v)
            model.writeTable(o, s, v)
        case .readTable(let o, let s):
            got = emulator.readTable(offset: o, size: s)
            want = model.readTable(o, s)
        case .writeCapability(let o, let s, let v):
            emulator.writeCapability(offset: o, size: s, value: v)
            model.writeCapability(o, s, v)
        case .readCapability(let o, let s):
            got = UInt64(emulator.readCapability(offset: o, size: s))
            want = UInt64(model.readCapability(o, s))
        case .readPBA(let o, let s):
            got = emulator.readPBA(offset: o, size: s)
            want = model.readPBA(o, s)
        case .writePBA(let o, let s):
            emulator.writePBA(offset: o, size: s, value: .max)
            model.writePBA(o, s)
        case .signal(let v):
            emulator.signal(vector: v)
            model.signal(v)
        case .signalEvent(let v):
            if useIrqfd {
                do { try emulator.event(for: v).signal() } catch { return "event(for: \(v)) threw \(error)" }
            } else {
                emulator.signal(vector: v)
            }
            model.signal(v)
        case .saveAndRestore:
            let saved = emulator.save()
            let delivered = takeDelivered()
            retiredBadAccesses += emulator.counters.badAccesses
            irqfd = RecordingIrqFd()
            emulator = MsixEmulator(
                layout: MsixLayout(vectorCount: vectorCount)!, delivery: useIrqfd ? .irqfd(irqfd) : .userspace(injector)
            )
            do { try emulator.restore(saved) } catch { return "restore threw \(error)" }
            if !delivered.isEmpty { return "save delivered \(delivered)" }
        case .reset:
            emulator.reset()
            model.reset()
        }
        if got != want {
            return "read 0x\(String(got ?? 0, radix: 16)), the spec says 0x\(String(want ?? 0, radix: 16))"
        }
        let delivered = takeDelivered().sorted { ($0.address, $0.data) < ($1.address, $1.data) }
        let expected = model.delivered.sorted { ($0.address, $0.data) < ($1.address, $1.data) }
        model.delivered = []
        if delivered != expected { return "delivered \(delivered), the spec says \(expected)" }
        if badAccesses != model.badAccesses {
            return "counted \(badAccesses) bad accesses, the spec says \(model.badAccesses) (\(emulator.counters))"
        }
        return nil
    }
}

/// Runs `words` as steps against the emulator and the model; nil if they agree throughout.
func disagreement(_ words: [UInt64], vectorCount: Int, useIrqfd: Bool) -> String? {
    let underTest = EmulatorUnderTest(vectorCount: vectorCount, useIrqfd: useIrqfd)
    var model = SpecModel(vectorCount: vectorCount)
    var trail: [String] = []
    for word in words {
        let step = Step(word, vectorCount: vectorCount)
        trail.append(step.description)
        if let problem = underTest.step(step, &model) {
            return "after \(trail.suffix(12).joined(separator: "; ")): \(problem)"
        }
    }
    // At the end: every entry and every pending bit agree too.
    for v in 0..<vectorCount {
        let e = underTest.emulator.entry(v)
        let m = model.entries[v]
        if e.addressLow != m.addressLow || e.addressHigh != m.addressHigh || e.data != m.data || e.isMasked != m.masked
        {
            return "entry \(v) is \(e), the spec says \(m)"
        }
    }
    return nil
}

@Suite struct MsixModelTests {
    /// Random guest and device activity, with shrinking to the shortest failing run.
    @Test(.shrinking, arguments: [(5, true), (5, false), (70, true), (70, false)])
    func theEmulatorAgreesWithTheSpecOnRandomRuns(vectorCount: Int, useIrqfd: Bool) async {
        await propertyCheck(count: 300, input: Gen<UInt64>.value().array(of: 1...200)) { words in
            let problem = disagreement(words, vectorCount: vectorCount, useIrqfd: useIrqfd)
            #expect(problem == nil, "\(vectorCount) vectors, \(useIrqfd ? "irqfd" : "userspace"): \(problem ?? "")")
        }
    }

    /// The same check from a fixed seed, long runs, printing the seed on failure.
    @Test(arguments: [true, false])
    func longRunsFromAFixedSeed(useIrqfd: Bool) {
        let seed: UInt64 = 0x5EED_0F_1A5D
        var generator = SplitMix64(seed: seed)
        for run in 0..<20 {
            let words = (0..<2000).map { _ in generator.next() }
            let problem = disagreement(words, vectorCount: 9, useIrqfd: useIrqfd)
            #expect(problem == nil, "seed 0x\(String(seed, radix: 16)), run \(run): \(problem ?? "")")
            if problem != nil { return }
        }
    }
}
