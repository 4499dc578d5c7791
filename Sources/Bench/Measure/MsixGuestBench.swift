#if os(Linux)
import CBenchFloor
import Foundation
import Glibc
import IrqFdCore
import IrqFdKVM
import KVM
import MSIX
import Synchronization
import TinyVM

/// The MSI-X sections driven by a real guest (msix_bench.S): the
/// guest's own configuration cycles and MMIO writes reach the PCI test
/// device, one exit each, exactly as a driver's would.
///
/// Each run gets a TinyVM of its own (one vCPU) with the test device at
/// 00:01.0, its entries programmed masked by the host beforehand (untimed),
/// on the VM's partition, coalescing or synchronous
/// (`TinyVM.Configuration.coalescesCommits`). Times are host
/// CLOCK_MONOTONIC timestamps taken by the VMM when it handles the guest's
/// exits.
extension BenchRunner {
    /// `msix_bring_up[]`: 2048 vectors (`vectors`) brought live in each order,
    /// on a coalescing and a synchronous partition. `us` runs from the guest's
    /// mark (an OUT made just before its first configuration write) until the
    /// host sees every vector live in the kernel: each vector's route made and
    /// armed (KVM_IRQFD) and no entry waiting for a push. `pushes` counts the
    /// KVM_SET_GSI_ROUTING calls the VM made from the start of the guest
    /// until then.
    ///
    /// The machine's speed drifts (and under load, a lot), so on the
    /// coalescing partition the two orders run in paired rounds, alternating
    /// which goes first: `us` is each order's median, and the linux_order row
    /// carries the median of the per-round ratios with its 95% bootstrap
    /// interval. The synchronous partition's Linux order (2048 pushes of a
    /// growing table, seconds) runs once, for comparison.
    func measureGuestMsixBringUp(vectors: Int = 2048) throws(BenchError) -> [BenchReport.MsixBringUp] {
        var results: [BenchReport.MsixBringUp] = []
        let modes: [(name: String, code: UInt32)] = [("linux_order", 1), ("function_mask_batch", 2)]
        for coalesced in [true, false] {
            let partition = coalesced ? "coalescing" : "synchronous"
            let rounds = coalesced ? (options.quick ? 5 : 31) : 1
            var us: [[Double]] = [[], []]
            var pushes: [[Int]] = [[], []]
            for round in 0..<rounds {
                for k in (round % 2 == 0 ? [0, 1] : [1, 0]) {
                    progress(
                        "MSI-X bring-up (guest): \(vectors) vectors, \(modes[k].name), \(partition), round \(round + 1)/\(rounds)"
                    )
                    let (t, p) = try bringUpOnce(vectors: vectors, coalesced: coalesced, mode: modes[k])
                    us[k].append(t)
                    pushes[k].append(p)
                }
            }
            for k in modes.indices {
                var row = BenchReport.MsixBringUp(
                    vectors: vectors, mode: modes[k].name, us: Self.median(us[k]), pushes: pushes[k].max() ?? 0,
                    partition: partition)
                row.rounds = rounds
                if k == 0, rounds > 1 { row.ratioToBatch = BenchReport.PairedRatio(path: us[0], floor: us[1]) }
                results.append(row)
            }
        }
        return results
    }

    /// One guest bringing `vectors` vectors live in `mode`'s order: µs and pushes (see above).
    private func bringUpOnce(vectors: Int, coalesced: Bool, mode: (name: String, code: UInt32)) throws(BenchError) -> (
        Double, Int
    ) {
        let bench = try MsixBenchVM(vectors: vectors, coalesces: coalesced, mode: mode.code)
        let before = bench.vm.vm.counters.snapshot
        bench.vm.start()
        defer {
            bench.vm.stop()
            bench.vm.wait()
        }
        guard bench.vm.waitUntil(timeout: .seconds(120), { bench.marks.first(2) != nil }) else {
            throw .setup(
                "the bring-up guest (\(mode.name)) did not finish: \(bench.vm.hasEnded ? "\(bench.vm.wait())" : "timed out")"
            )
        }
        let routes = (0..<vectors).compactMap { bench.device.emulator.route($0) as? KVMIrqFdRoute }
        guard routes.count == vectors else { throw .setup("\(vectors - routes.count) vectors got no irqfd route") }
        let liveBy = Date().addingTimeInterval(30)
        // From the last route back: routes are armed in GSI order, so while some wait this
        // stops at once instead of taking 2048 route locks every 20 µs beside the arming.
        while bench.vm.irqfd.waitingEntryCount > 0 || !routes.reversed().allSatisfy(\.isArmed) {
            guard Date() < liveBy else { throw .setup("the vectors did not all go live in the kernel (\(mode.name))") }
            usleep(20)
        }
        let end = bench_floor_now_ns()
        let start = bench.marks.first(1) ?? end
        return (Double(end - start) / 1000, (bench.vm.vm.counters.snapshot - before).routingPushes)
    }

    /// `first_interrupt[]`: for each of `vectors` vectors in turn the guest
    /// rings it while masked, waits for its PBA bit, then unmasks it; a sample
    /// runs from the VMM receiving that unmask write (before the emulator
    /// handles it) until it receives the OUT the guest's handler makes first.
    /// The vector goes live on that write: on a coalescing partition its
    /// entry was committed when MSI-X went on (the emulator routes programmed
    /// vectors while they are masked), so the unmask arms its irqfd and the
    /// kernel injects the latched signal; on a synchronous one the route's
    /// entry is pushed (the whole table) and armed first.
    func measureFirstInterrupt(vectors: Int) throws(BenchError) -> [BenchReport.FirstInterrupt] {
        var results: [BenchReport.FirstInterrupt] = []
        for coalesced in [true, false] {
            let path = coalesced ? "coalescing" : "synchronous"
            progress("first interrupt after going live (guest): \(vectors) vectors, \(path)")
            let bench = try MsixBenchVM(vectors: vectors, coalesces: coalesced, mode: 3)
            bench.vm.start()
            let outcome = bench.vm.wait(timeout: .seconds(180))
            guard outcome == .exited(code: 0) else { throw .setup("the first-interrupt guest (\(path)): \(outcome)") }
            let unmasks = bench.bar.unmasks.withLock { $0 }
            let handled = bench.marks.all(3)
            guard unmasks.count == vectors, handled.count == vectors else {
                throw .setup(
                    "first interrupt (\(path)): \(unmasks.count) unmasks, \(handled.count) handler runs for \(vectors) vectors"
                )
            }
            var samples = zip(handled, unmasks).map { Double($0 &- $1) / 1000 }
            samples.sort()
            func percentile(_ p: Double) -> Double { samples[min(samples.count - 1, Int(p * Double(samples.count)))] }
            results.append(.init(path: path, p50Us: percentile(0.50), p99Us: percentile(0.99), samples: samples.count))
        }
        return results
    }

    /// The targets of the guest-driven bring-up: the paired
    /// ratio's 95% upper end under 1.2x, and at most 8 pushes.
    static func msixTargets(_ report: BenchReport) -> [BenchReport.TargetCheck] {
        let linux = (report.msixBringUp ?? []).first { $0.partition == "coalescing" && $0.mode == "linux_order" }
        let paired = linux?.ratioToBatch
        return [
            .init(
                name: "MSI-X bring-up by a guest, linux_order / function_mask_batch (95% upper)", ratio: paired?.high,
                limit: 1.2,
                note: paired.map {
                    String(
                        format: "coalescing partition, %d vectors: median %.2fx [%.2f, %.2f] over %d paired rounds",
                        linux?.vectors ?? 0, $0.median, $0.low, $0.high, $0.rounds)
                } ?? "not measured"),
            .init(
                name: "MSI-X bring-up by a guest, linux_order pushes / 8", ratio: linux.map { Double($0.pushes) / 8 },
                limit: 1.0,
                note: linux.map {
                    "at most \($0.pushes) KVM_SET_GSI_ROUTING calls for \($0.vectors) one-at-a-time unmasks"
                } ?? "not measured"),
        ]
    }
}

/// A TinyVM running msix_bench.S against a test device whose table BAR and
/// mark port are timed.
struct MsixBenchVM {
    let vm: TinyVM
    let device: MsixTestDevice
    let bar: TimedMsixBar
    let marks: MarkPort

    init(vectors: Int, coalesces: Bool, mode: UInt32) throws(BenchError) {
        do {
            vm = try TinyVM(.init(cpus: 1, memorySize: 2 << 20, coalescesCommits: coalesces))
            try vm.load(GuestProgram.msixBench.image)
            device = try MsixTestDevice(vm: vm, vectors: vectors, delivery: .irqfd)
        } catch { throw .setup("MSI-X bench VM: \(error)") }
        bar = TimedMsixBar(device: device, vectors: vectors)
        marks = MarkPort(capacity: vectors + 2)
        vm.pci.plug(device, device: MsixTestDevice.slot)
        vm.attach(
            mmio: MsixTestDevice.registersBase..<MsixTestDevice.registersBase + MsixTestDevice.registersSize, device)
        vm.attach(mmio: MsixTestDevice.msixBase..<MsixTestDevice.msixBase + MsixTestDevice.msixSize, bar)
        vm.attach(ports: MsixBenchGuestLayout.markPort...MsixBenchGuestLayout.markPort, marks)
        // Every entry: APIC 0, IDT vector 0x40, masked (the reset state's mask).
        let message = MsiMessage(destination: 0, vector: MsixBenchGuestLayout.vector)
        for v in 0..<vectors {
            let entry = UInt64(MsixLayout.entrySize * v)
            device.emulator.writeTable(offset: entry, size: 4, value: message.address & 0xFFFF_FFFF)
            device.emulator.writeTable(offset: entry + 8, size: 4, value: UInt64(message.data))
        }
        vm.memory.write32(mode, at: MsixBenchGuestLayout.mode)
        vm.memory.write32(UInt32(vectors), at: MsixBenchGuestLayout.vectors)
    }
}

/// The guest's marks on port 0xE0, each with the host time it arrived.
final class MarkPort: PortDevice {
    private let marks: Mutex<[(value: UInt32, ns: UInt64)]>

    init(capacity: Int) {
        var initial: [(value: UInt32, ns: UInt64)] = []
        initial.reserveCapacity(capacity)
        marks = Mutex(initial)
    }

    func read(port: UInt16, size: Int) -> UInt32 { 0 }
    func write(port: UInt16, size: Int, value: UInt32) {
        let now = bench_floor_now_ns()
        marks.withLock { $0.append((value & 0xFF, now)) }
    }

    /// When the first mark `value` arrived.
    func first(_ value: UInt32) -> UInt64? { marks.withLock { $0.first { $0.value == value }?.ns } }
    /// When each mark `value` arrived, in order.
    func all(_ value: UInt32) -> [UInt64] { marks.withLock { $0.filter { $0.value == value }.map(\.ns) } }
}

/// BAR1 of the test device, with the host time of every write that clears
/// an entry's mask bit (taken before the emulator handles the write).
final class TimedMsixBar: MMIODevice {
    let device: MsixTestDevice
    let unmasks: Mutex<[UInt64]>
    private let tableEnd: UInt64

    init(device: MsixTestDevice, vectors: Int) {
        self.device = device
        var initial: [UInt64] = []
        initial.reserveCapacity(vectors)
        unmasks = Mutex(initial)
        tableEnd = MsixTestDevice.msixBase + UInt64(MsixLayout.entrySize * vectors)
    }

    func read(address: UInt64, size: Int) -> UInt64 { device.read(address: address, size: size) }
    func write(address: UInt64, size: Int, value: UInt64) {
        if address < tableEnd, (address - MsixTestDevice.msixBase) % 16 == 12, value & 1 == 0 {
            let now = bench_floor_now_ns()
            unmasks.withLock { $0.append(now) }
        }
        device.write(address: address, size: size, value: value)
    }
}
#endif
