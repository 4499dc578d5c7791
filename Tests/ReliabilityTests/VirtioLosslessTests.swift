#if os(Linux)
import Foundation
import IrqFdCore
import KVMTestSupport
import MSIX
import PCI
import TestSupport
import Testing
import TinyVM
import Virtio

/// The virtio-blk lossless-under-load rig: the stress guest
/// (`GuestProgram.virtioBlkStress`) on two vCPUs driving the virtio-blk
/// device at 00:02.0, served by a real vhost-user backend, while the host
/// plays a second driver on the device's MSI-X: it masks, unmasks,
/// function-masks, clears bus mastering, retargets (vCPU 0 <-> vCPU 1) and
/// re-vectors the queue's vector, and reads the PBA, through the same
/// `VirtioBlkDevice` entry points a guest's MMIO and configuration writes
/// reach.
///
/// The "masked" word and the masking are ordered so that a handler run the
/// guest counts as "while masked" is exactly a run that started after the
/// host took the vector dead (PCI Local Bus 3.0 §6.8.2: a masked vector sends
/// no message, so none may run after the mask is in place):
/// - Taking vector v dead (entry mask, function mask, bus master off, when v
///   was live): the write first (after it returns no route injects v: KVM
///   irqfd deassigned, the relay's route masked, the userspace path checks
///   under the emulator's lock), then a *fence*: an MSI of IDT vector 0x21
///   to each vCPU, waited for until each vCPU's fence handler ran. 0x21 is in
///   a lower priority class than every device vector (0x40 + v, 0x80 + v),
///   and the guest's handlers run with interrupts off to their IRET, so by
///   then every v injected before the write has been handled and returned.
///   Only then the masked word is set: a run that sees it is a run of an
///   interrupt delivered while v was dead.
/// - Bringing v live: the masked word is cleared first, then the write (so a
///   pending interrupt released by the write is never counted).
final class VirtioStressRig {
    typealias L = VirtioBlkStressLayout
    static let cpus = 2
    /// MSI-X vector 0 (config changes) and 1 (queue 0).
    static let vectors = 2
    static let queueVector = 1

    let imagePath: String
    let backend: BlockBackend
    let vm: TinyVM
    let device: VirtioBlkDevice
    let total: Int
    let inFlight: Int
    let sectors: Int

    /// The host's copy of what it programmed.
    private(set) var destination = [UInt32](repeating: 0, count: VirtioStressRig.vectors)
    private(set) var highVector = [Bool](repeating: false, count: VirtioStressRig.vectors)
    private(set) var entryMasked = [Bool](repeating: false, count: VirtioStressRig.vectors)
    private(set) var functionMasked = false
    private(set) var busMasterOff = false
    private(set) var fences = 0
    /// Times the queue's vector came live with used entries the guest had not
    /// consumed: only the latched (pending) interrupt could tell the guest.
    private(set) var latchedUnmasks = 0
    /// Of those, times every request in flight had completed: the guest had
    /// nothing left to wake it but that one interrupt.
    private(set) var drainedUnmasks = 0

    /// Starts `kind` on a fresh image, the VM and the guest, and waits until
    /// the guest has its first `inFlight` requests out (phase 1).
    init(kind: DiskBackendKind, delivery: InterruptDelivery, total: Int, inFlight: Int, sectors: Int = 2048) throws {
        precondition(sectors & (sectors - 1) == 0 && (1...L.maxInFlight).contains(inFlight) && total <= L.maxTotal)
        self.total = total
        self.inFlight = inFlight
        self.sectors = sectors
        imagePath = NSTemporaryDirectory() + "irqfd-lossless-\(UUID().uuidString).img"
        var words = [UInt32](repeating: 0, count: sectors * 128)
        for k in 0..<sectors { for j in 0..<128 { words[128 * k + j] = L.imageWord(sector: k, dword: j).littleEndian } }
        let data = words.withUnsafeBytes { Data($0) }
        guard FileManager.default.createFile(atPath: imagePath, contents: data) else {
            throw TestFailure("cannot create \(imagePath)")
        }
        backend = try BlockBackend(kind: kind, image: imagePath)
        vm = try TinyVM(.init(cpus: Self.cpus))
        device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath, delivery: delivery)
        try vm.startVirtioBlkStress(total: total, inFlight: inFlight, sectors: sectors)
        let running = vm.waitUntil(timeout: .seconds(60)) {
            vm.memory.read32(at: L.phase) >= 1
                && (0..<Self.cpus).allSatisfy { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: $0)) == 1 }
        }
        guard running else {
            throw TestFailure(
                "stress guest not running: \(vm.hasEnded ? "\(vm.wait())" : "phase \(vm.memory.read32(at: L.phase))"), device \(device.counters)"
            )
        }
    }

    deinit {
        vm.stop(disk: device, backend: backend)
        try? FileManager.default.removeItem(atPath: imagePath)
    }

    func word(_ address: UInt64) -> Int { Int(vm.memory.read32(at: address)) }
    var phase: Int { word(L.phase) }
    var completed: Int { word(L.completed) }
    var consumed: Int { word(L.consumed) }
    var submitted: Int { word(L.submitted) }
    /// The used ring's idx (the device's).
    var usedIndex: UInt16 { UInt16(vm.memory.read32(at: L.usedIndex - 2) >> 16) }

    func isLive(_ v: Int) -> Bool { !functionMasked && !busMasterOff && !entryMasked[v] }

    private func writeEntry(_ v: Int, _ dword: Int, _ value: UInt32) {
        device.write(address: VirtioBlkDevice.msixBase + UInt64(16 * v + 4 * dword), size: 4, value: UInt64(value))
    }

    private func setFlag(_ v: Int, _ masked: Bool) { vm.memory.write32(masked ? 1 : 0, at: L.masked(v)) }

    /// After this returns every interrupt injected before it was called has
    /// been handled (see the type's comment).
    func fence() {
        let i = L.index(of: L.fenceVector)
        let before = (0..<Self.cpus).map { word(L.runs(cpu: $0, i)) }
        for cpu in 0..<Self.cpus {
            let fence = MsiMessage(destination: UInt32(cpu), vector: L.fenceVector)
            _ = try? vm.vm.signalMsi(address: fence.address, data: fence.data)
        }
        let done = vm.waitUntil(timeout: .seconds(20)) {
            (0..<Self.cpus).allSatisfy { self.word(L.runs(cpu: $0, i)) > before[$0] }
        }
        if !done { Issue.record("the fence interrupt did not arrive within 20 s: the guest is stuck") }
        fences += 1
    }

    /// Notes what the guest is waiting for just before the queue's vector comes live.
    private func noteComingLive(_ live: [Int]) {
        guard live.contains(Self.queueVector) else { return }
        let waiting = Int(usedIndex &- UInt16(truncatingIfNeeded: consumed))
        guard waiting > 0 else { return }
        latchedUnmasks += 1
        if waiting == submitted - consumed { drainedUnmasks += 1 }
    }

    /// Takes the vectors in `live` dead with `write`, then fences, then raises their flags.
    private func goDead(_ live: [Int], _ write: () -> Void) {
        write()
        guard !live.isEmpty else { return }
        fence()
        for v in live { setFlag(v, true) }
    }

    /// Lowers the flags of the vectors `change` brings live, then `write`s.
    private func goLive(_ change: () -> Void, then write: () -> Void) {
        let dead = (0..<Self.vectors).filter { !isLive($0) }
        change()
        let coming = dead.filter(isLive)
        for v in coming { setFlag(v, false) }
        noteComingLive(coming)
        write()
    }

    func mask(_ v: Int) {
        guard !entryMasked[v] else { return }
        let live = isLive(v) ? [v] : []
        entryMasked[v] = true
        goDead(live) { writeEntry(v, 3, 1) }
    }

    func unmask(_ v: Int) {
        guard entryMasked[v] else { return }
        goLive({ entryMasked[v] = false }, then: { writeEntry(v, 3, 0) })
    }

    private var control: UInt32 { 0x8000 | (functionMasked ? 0x4000 : 0) }

    func maskFunction() {
        guard !functionMasked else { return }
        let live = (0..<Self.vectors).filter(isLive)
        functionMasked = true
        goDead(live) { device.configWrite(offset: VirtioBlkDevice.msixCapabilityOffset + 2, size: 2, value: control) }
    }

    func unmaskFunction() {
        guard functionMasked else { return }
        goLive(
            { functionMasked = false },
            then: { device.configWrite(offset: VirtioBlkDevice.msixCapabilityOffset + 2, size: 2, value: control) })
    }

    /// PCI command register: memory space (bit 1) always, bus master (bit 2) as asked.
    func setBusMaster(_ on: Bool) {
        guard busMasterOff == on else { return }
        let command: UInt32 = on ? 0x0006 : 0x0002
        if on {
            goLive({ busMasterOff = false }, then: { device.configWrite(offset: 0x04, size: 2, value: command) })
        } else {
            let live = (0..<Self.vectors).filter(isLive)
            busMasterOff = true
            goDead(live) { device.configWrite(offset: 0x04, size: 2, value: command) }
        }
    }

    /// Moves vector `v` to the other vCPU (the address's destination ID), masked or not.
    func retarget(_ v: Int) {
        destination[v] ^= 1
        writeEntry(v, 0, 0xFEE0_0000 | destination[v] << 12)
    }

    /// Flips vector `v` between IDT vectors 0x40 + v and 0x80 + v (the data).
    func changeData(_ v: Int) {
        highVector[v].toggle()
        writeEntry(v, 2, UInt32(L.idtVector(msix: v, high: highVector[v])))
    }

    func readPBA() -> UInt64 {
        device.read(address: VirtioBlkDevice.msixBase + UInt64(VirtioBlkDevice.pbaOffset), size: 8)
    }

    /// Every vector live again.
    func unmaskAll() {
        setBusMaster(true)
        unmaskFunction()
        for v in 0..<Self.vectors { unmask(v) }
    }

    func runs(_ v: Int, cpu: Int) -> Int { word(L.runs(cpu: cpu, v)) }
    func violations(_ v: Int) -> Int { (0..<Self.cpus).reduce(0) { $0 + word(L.runsWhileMasked(cpu: $1, v)) } }

    /// Requests whose bitmap bit is clear.
    func missingRequests() -> [Int] {
        let bytes = vm.memory.bytes(at: L.bitmap, count: (total + 7) / 8)
        return (0..<total).filter { bytes[$0 / 8] & (1 << ($0 % 8)) == 0 }
    }

    /// The slots whose buffers do not hold their last request's sector, byte for byte.
    func slotsWithWrongData() -> [Int] {
        (0..<inFlight).filter { s in
            let k = word(L.request(slot: s)) & (sectors - 1)
            let want = (0..<128).flatMap { j in
                withUnsafeBytes(of: L.imageWord(sector: k, dword: j).littleEndian, Array.init)
            }
            return vm.memory.bytes(at: L.buffer(slot: s), count: 512) != want
        }
    }

    /// What the guest and the device say, for a failure message.
    var summary: String {
        "phase \(phase), submitted \(submitted), completed \(completed), consumed \(consumed), used idx \(usedIndex), "
            + "avail idx \(word(L.availIndex)), PBA \(readPBA()), entry masked \(entryMasked), function masked \(functionMasked), "
            + "bus master off \(busMasterOff), destinations \(destination), device status \(device.status), device \(device.counters), "
            + "backend running \(backend.isRunning), emulator \(device.emulator.counters)"
    }
}

/// Lossless under load: many virtio-blk requests in flight against a real
/// vhost-user backend while the host masks, unmasks, function-masks, clears
/// bus mastering, retargets and re-vectors the queue's vector at random
/// (seeded): the guest accounts for every completion exactly once (each
/// request id's bit set once, status 0, data words right; the host checks the
/// final buffers byte for byte) and never takes a handler run while the
/// vector is held masked. A lost completion interrupt stalls the guest (it
/// never polls), which the test reports with the PBA and ring indices.
///
/// Every `--delivery` mode. `IRQFD_VHOST_LOSSLESS_REQUESTS` requests per mode
/// against qemu-storage-daemon (default 100,000; 1,000,000 for the long run),
/// `IRQFD_VHOST_LOSSLESS_EMBEDDED_REQUESTS` against the embedded backend
/// (default 20,000). `IRQFD_VHOST_LOSSLESS_SEED` repeats the host's sequence of
/// operations (their timing against the guest and the backend varies).
@Suite(needsKVM, .serialized) struct VirtioLosslessUnderLoadTests {
    static let requests = environmentCount("IRQFD_VHOST_LOSSLESS_REQUESTS", default: 100_000)
    static let embeddedRequests = environmentCount("IRQFD_VHOST_LOSSLESS_EMBEDDED_REQUESTS", default: 20_000)
    static let inFlight = 64
    /// No completion for this long, with every vector live: an interrupt was lost.
    static let stallLimit: Duration = .seconds(30)

    static let qsdPresent = Testing.ConditionTrait.enabled(
        if: DiskBackendKind.qemuStorageDaemonPath != nil,
        "skipped: qemu-storage-daemon is not installed (apt-get install --no-install-recommends qemu-system-common)")
    static let embeddedBuilt = Testing.ConditionTrait.enabled(
        if: BlockBackend.embeddedExecutable() != nil, "skipped: the irqfd-vhost-user-blk executable is not built")

    @Test(Self.qsdPresent, arguments: InterruptDelivery.allCases)
    func qemuStorageDaemonEveryCompletionOnceNoneWhileMasked(_ delivery: InterruptDelivery) throws {
        try stress(.qemuStorageDaemon, delivery, requests: Self.requests)
    }

    @Test(Self.embeddedBuilt, arguments: InterruptDelivery.allCases)
    func embeddedBackendEveryCompletionOnceNoneWhileMasked(_ delivery: InterruptDelivery) throws {
        try stress(.embedded, delivery, requests: Self.embeddedRequests)
    }

    func stress(_ kind: DiskBackendKind, _ delivery: InterruptDelivery, requests: Int) throws {
        let what = "virtio-blk lossless under load (\(kind), \(delivery))"
        let seed = announcedSeed("IRQFD_VHOST_LOSSLESS_SEED", for: what)
        var random = SplitMix64(seed: seed)
        let rig = try VirtioStressRig(kind: kind, delivery: delivery, total: requests, inFlight: Self.inFlight)
        let start = ContinuousClock.now
        var operations = [String: Int]()
        func count(_ name: String) { operations[name, default: 0] += 1 }
        var progress = (completed: rig.completed, at: ContinuousClock.now)
        var stalled = false
        while rig.phase != 2, !rig.vm.hasEnded {
            // Mostly the queue's vector; sometimes the config vector.
            let v = Int.random(in: 0..<10, using: &random) < 8 ? VirtioStressRig.queueVector : 0
            switch Int.random(in: 0..<100, using: &random) {
            case 0..<20:
                rig.mask(v)
                count("mask")
            case 20..<45:
                rig.unmask(v)
                count("unmask")
            case 45..<57:
                rig.retarget(v)
                count("retarget")
            case 57..<64:
                rig.changeData(v)
                count("change data")
            case 64..<76:
                _ = rig.readPBA()
                count("read PBA")
            case 76..<80:
                rig.maskFunction()
                count("function mask")
            case 80..<85:
                rig.unmaskFunction()
                count("function unmask")
            case 85..<87:
                rig.setBusMaster(false)
                count("bus master off")
            case 87..<90:
                rig.setBusMaster(true)
                count("bus master on")
            default:
                usleep(UInt32.random(in: 0..<2000, using: &random))
                count("hold")
            }
            let now = ContinuousClock.now
            if rig.completed != progress.completed {
                progress = (rig.completed, now)
            } else if now - progress.at > Self.stallLimit {
                // Every vector live for a whole stall limit and still nothing: lost.
                rig.unmaskAll()
                let before = rig.completed
                if !rig.vm.waitUntil(timeout: Self.stallLimit, { rig.completed != before }) {
                    stalled = true
                    break
                }
                progress = (rig.completed, ContinuousClock.now)
            }
        }
        rig.unmaskAll()
        let finished = !stalled && rig.vm.waitUntil(timeout: Self.stallLimit) { rig.phase == 2 }
        let elapsed = ContinuousClock.now - start
        #expect(finished, "\(what): the guest stalled, an interrupt was lost: \(rig.summary), seed \(seed)")

        typealias L = VirtioBlkStressLayout
        usleep(20_000)  // a late, coalesced interrupt after the last completion is counted too
        let runs = (0..<VirtioStressRig.cpus).map { rig.runs(VirtioStressRig.queueVector, cpu: $0) }
        let violations = (0..<VirtioStressRig.vectors).map(rig.violations)
        let emulator = rig.device.emulator.counters
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print(
            "\(what): \(rig.completed) of \(requests) requests (\(Self.inFlight) in flight) in \(elapsed), "
                + "\(Int(Double(rig.completed) / max(seconds, 1e-9))) requests/s; queue handler runs per vCPU \(runs), "
                + "empty \(rig.word(L.emptyInterrupts)); host operations "
                + operations.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                + "; \(rig.fences) fences; unmasks with completions waiting \(rig.latchedUnmasks), with all in flight completed "
                + "\(rig.drainedUnmasks); handler runs while masked \(violations); emulator: \(emulator)")
        guard finished else { return }

        #expect(
            rig.completed == requests && rig.submitted == requests && rig.consumed == requests,
            "\(what): \(rig.summary)")
        #expect(
            rig.usedIndex == UInt16(truncatingIfNeeded: requests),
            "\(what): the device completed exactly N: \(rig.summary)")
        #expect(rig.word(L.badIDs) == 0, "\(what): used ids naming no request in flight")
        #expect(rig.word(L.duplicates) == 0, "\(what): requests completed twice")
        #expect(rig.word(L.badStatus) == 0, "\(what): completions with a status other than VIRTIO_BLK_S_OK")
        #expect(rig.word(L.badData) == 0, "\(what): completions whose data was not their sector's")
        let missing = rig.missingRequests()
        #expect(missing.isEmpty, "\(what): \(missing.count) request ids never completed, first \(missing.prefix(8))")
        let wrong = rig.slotsWithWrongData()
        #expect(wrong.isEmpty, "\(what): slots whose last buffer is not its sector: \(wrong)")
        #expect(violations.allSatisfy { $0 == 0 }, "\(what): handlers ran while masked \(violations), seed \(seed)")
        #expect(runs[1] > 0, "\(what): retargeting moved completions to vCPU 1: \(runs)")
        #expect(rig.latchedUnmasks > 0, "\(what): no unmask found completions waiting; the latch was never exercised")
        #expect(emulator.routeErrors == 0 && emulator.deliveryErrors == 0, "\(what): \(emulator)")
        #expect(
            rig.device.counters.backendFailures == 0 && rig.device.status & VirtioBlkDevice.Status.needsReset == 0,
            "\(what): \(rig.summary)")
        #expect(!rig.vm.hasEnded, "\(what): the guest is still running: \(rig.vm.hasEnded ? "\(rig.vm.wait())" : "")")
    }
}
#endif
