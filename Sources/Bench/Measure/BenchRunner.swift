#if os(Linux)
import CBenchFloor
import CLinuxKVM
import Foundation
import Glibc
import Histogram
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import IrqFdRouting
import KVM
import MSIX
import TinyVM

/// What a run measures and for how long.
public struct BenchOptions: Sendable {
    /// Delivery latency samples per path.
    public var samples: Int
    /// A short run (under 20 s): fewer repetitions and shorter intervals.
    public var quick: Bool
    /// What to measure (all by default).
    public var sections: Set<Section>

    /// The parts of a run.
    public enum Section: String, CaseIterable, Sendable {
        /// Delivery latency per path.
        case delivery
        /// Interrupts per second through 1 and 8 vectors.
        case throughput
        /// Back-to-back signals and coalescing.
        case bursts
        /// Route programming for N routes.
        case programming
        /// Mask + unmask cycles.
        case mask
        /// Route creation/release rates and memory per route.
        case lifecycle
        /// virtio-blk requests through a vhost-user back-end: latency, throughput, mask + unmask.
        case vhostUser = "vhost-user"
        /// MSI-X bring-up and first interrupts, driven by a real guest (`msix_bring_up`, `first_interrupt`).
        case msix
        /// A running guest handed to a new VM: its pause and whole hand-off against a C floor.
        case liveUpdate = "live-update"
    }

    /// The default run: 5,000 samples per path, every section.
    public init(samples: Int? = nil, quick: Bool = false, sections: Set<Section> = Set(Section.allCases)) {
        self.quick = quick
        self.samples = samples ?? (quick ? 1000 : 5000)
        self.sections = sections
    }

    var throughputSeconds: Double { quick ? 0.1 : 0.5 }
    var burstCount: Int { quick ? 4 : 16 }
    var burstSize: Int { 64 }
    var programmingSizes: [Int] { [1, 16, 256, 2048] }
    var programmingRepetitions: Int { quick ? 1 : 9 }
    var maskCycles: Int { quick ? 400 : 2000 }
    var lifecycleCount: Int { quick ? 200 : 2000 }
    /// Pause after each latency sample so the guest is back in HLT (its
    /// handler runs emulated, about a microsecond an instruction).
    var gapNanoseconds: UInt64 { 150_000 }
}

/// Runs every measurement of `irqfd bench` on one TinyVM guest and returns
/// the report. Reports progress (one short line per step) through `progress`.
///
/// The delivery method, the same for every path: one host thread plays the
/// device. It reads the guest's per-vector interrupt counter, takes a
/// CLOCK_MONOTONIC timestamp, signals (the path's own way: an eventfd write,
/// a call into the MSI-X emulator, a KVM_SIGNAL_MSI), then spins reading
/// guest memory until the counter changes and takes a second timestamp.
/// The difference is signal -> guest handler ran. Paths are measured in
/// interleaved rounds so drift in the machine's speed hits all alike.
public final class BenchRunner {
    let options: BenchOptions
    let progress: (String) -> Void

    /// A runner; `progress` receives status lines (e.g. to draw on stderr).
    public init(options: BenchOptions, progress: @escaping (String) -> Void = { _ in }) {
        self.options = options
        self.progress = progress
    }

    /// Runs everything. Needs /dev/kvm.
    public func run() throws(BenchError) -> BenchReport {
        let started = bench_floor_now_ns()
        let date = Date().ISO8601Format()
        progress("starting the guest")
        let guest = try startInterruptCountingGuest()
        defer {
            guest.stop()
            guest.wait()
        }
        let gsiLimit = guest.vm.checkExtension(.irqRouting)
        var gaps: [String] = []

        // Delivery, throughput and bursts share the paths.
        let sections = options.sections
        var delivery: [BenchReport.Delivery] = []
        var throughput: [BenchReport.Throughput] = []
        var bursts: [BenchReport.Burst] = []
        if !sections.isDisjoint(with: [.delivery, .throughput, .bursts]) {
            let paths = try makePaths(guest, gsiLimit: gsiLimit)
            if sections.contains(.delivery) { delivery = try measureLatency(guest, paths) }
            if sections.contains(.throughput) { throughput = try measureThroughput(guest, paths) }
            if sections.contains(.bursts) { bursts = try measureBursts(guest, paths) }
            for path in paths { path.close() }
            let missing = Set(Targets.Path.all).subtracting(paths.map(\.name))
            for name in Targets.Path.all where missing.contains(name) {
                gaps.append("\(name): path not available in this build")
            }
        }
        let programming = sections.contains(.programming) ? try measureProgramming(guest) : []
        let mask = sections.contains(.mask) ? try measureMaskUnmask(guest, gsiLimit: gsiLimit) : nil
        let lifecycle = sections.contains(.lifecycle) ? try measureLifecycle(guest) : nil
        for section in BenchOptions.Section.allCases where !sections.contains(section) {
            gaps.append("\(section.rawValue): not asked for (--only)")
        }

        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let machine = BenchReport.Machine(
            kernel: kernel, cpus: sysconf(Int32(_SC_NPROCESSORS_ONLN)),
            kvmApiVersion: (try? guest.vm.system.apiVersion()) ?? 0, gsiLimit: gsiLimit,
            gsiCapacity: guest.irqfd.gsiCapacity, samplesPerPath: options.samples, quick: options.quick,
            seconds: Double(bench_floor_now_ns() - started) / 1e9, date: date)
        var report = BenchReport(
            machine: machine, delivery: delivery, throughput: throughput, bursts: bursts,
            programming: programming, maskUnmask: mask, lifecycle: lifecycle, gaps: gaps)
        if sections.contains(.msix) {
            report.msixBringUp = try measureGuestMsixBringUp()
            report.firstInterrupt = try measureFirstInterrupt(vectors: options.quick ? 256 : 1024)
        }
        report.targets = Targets.check(report) + Self.msixTargets(report)
        if sections.contains(.vhostUser) {
            let vhostUser = try VhostUserBench(options: options, progress: progress).run()
            report.vhostUser = vhostUser
            report.targets += vhostUser.targets
            report.virtioNet = try VirtioNetBench(options: options, progress: progress).run()
        }
        if sections.contains(.liveUpdate) {
            let liveUpdate = try LiveUpdateBench(options: options, progress: progress).run()
            report.liveUpdate = liveUpdate
            report.targets += liveUpdate.targets
        }
        report.machine.seconds = Double(bench_floor_now_ns() - started) / 1e9
        return report
    }

    // MARK: - Delivery

    private func makePaths(_ guest: TinyVM, gsiLimit: Int) throws(BenchError) -> [DeliveryPath] {
        progress("setting up the delivery paths")
        func vectors(_ index: Int) -> [UInt8] { (0..<DeliveryPath.channels).map { UInt8(0x40 + 8 * index + $0) } }
        // irqfd first: the raw push then carries the library's entries too.
        let irqfd = try DeliveryPath.irqfd(guest, vectors: vectors(0))
        let rawGsis = (0..<DeliveryPath.channels).map { UInt32(gsiLimit - DeliveryPath.channels + $0) }
        let raw = try DeliveryPath.raw(guest, vectors: vectors(1), gsis: rawGsis)
        let relay = try DeliveryPath.relay(guest, vectors: vectors(2))
        let rawRelay = try DeliveryPath.rawRelay(guest, vectors: vectors(3))
        let userspace = try DeliveryPath.userspace(guest, vectors: vectors(4))
        let rawSignalMsi = DeliveryPath.rawSignalMsi(guest, vectors: vectors(5))
        return [irqfd, raw, relay, rawRelay, userspace, rawSignalMsi]
    }

    /// Where the guest counts `vector`'s interrupts on vCPU 0.
    private func counter(_ guest: TinyVM, _ vector: UInt8) -> UnsafeMutableRawPointer {
        guest.memory.base + Int(InterruptCounterLayout.count(cpu: 0, vector: vector))
    }

    /// One delivery: signal, then spin on the guest's counter. Nanoseconds.
    @inline(__always)
    private func deliverOnce(_ path: DeliveryPath, channel: Int, counter: UnsafeMutableRawPointer) throws(BenchError)
        -> UInt64
    {
        let before = irqfd_load32(counter)
        let start = bench_floor_now_ns()
        path.signal(channel)
        var spins: UInt32 = 0
        while irqfd_load32(counter) == before {
            spins &+= 1
            if spins & 0x3FF == 0, bench_floor_now_ns() - start > 2_000_000_000 {
                throw .lost(path: path.name, vector: path.vectors[channel], during: "latency sampling")
            }
        }
        return bench_floor_now_ns() - start
    }

    func pause(_ nanoseconds: UInt64) {
        let until = bench_floor_now_ns() + nanoseconds
        while bench_floor_now_ns() < until {}
    }

    /// Latency per path, paired with its floor: each round
    /// takes `roundSamples` samples of every path, interleaved sample by sample
    /// (path order rotating from round to round), so a slow spell of the
    /// machine lands on a path and its floor alike. A path's ratio to its floor
    /// is the median of the rounds' p50 ratios, with a bootstrap interval.
    private func measureLatency(_ guest: TinyVM, _ paths: [DeliveryPath]) throws(BenchError) -> [BenchReport.Delivery] {
        var histograms = [Histogram<UInt64>](repeating: LatencySummary.histogram(), count: paths.count)
        let counters = paths.map { counter(guest, $0.vectors[0]) }
        // Warm-up: caches, the relay threads, the vCPU's first wake-ups.
        for (i, path) in paths.enumerated() {
            for _ in 0..<50 {
                _ = try deliverOnce(path, channel: 0, counter: counters[i])
                pause(options.gapNanoseconds)
            }
        }
        let roundSamples = 25
        var roundP50s = [[Double]](repeating: [], count: paths.count)
        var round = [[UInt64]](repeating: [], count: paths.count)
        var done = 0
        var order = Array(paths.indices)
        while done < options.samples {
            let n = min(roundSamples, options.samples - done)
            for i in paths.indices { round[i].removeAll(keepingCapacity: true) }
            for _ in 0..<n {
                for i in order {
                    let ns = try deliverOnce(paths[i], channel: 0, counter: counters[i])
                    _ = histograms[i].record(ns)
                    round[i].append(ns)
                    pause(options.gapNanoseconds)
                }
            }
            for i in paths.indices { roundP50s[i].append(Self.median(round[i].map(Double.init))) }
            done += n
            order.append(order.removeFirst())  // rotate who goes first
            if done % 500 < roundSamples || done == options.samples {
                progress(
                    "delivery latency: \(done)/\(options.samples) samples per path, \(paths.count) paths, interleaved")
            }
        }
        return paths.enumerated().map { i, path in
            let floor = path.floor.flatMap { name in paths.firstIndex { $0.name == name } }
            return BenchReport.Delivery(
                path: path.name, floor: path.floor, latency: LatencySummary(nanoseconds: histograms[i]),
                p50Ratio: floor.flatMap { BenchReport.PairedRatio(path: roundP50s[i], floor: roundP50s[$0]) })
        }
    }

    private func measureThroughput(_ guest: TinyVM, _ paths: [DeliveryPath]) throws(BenchError) -> [BenchReport
        .Throughput]
    {
        var results: [BenchReport.Throughput] = []
        let duration = UInt64(options.throughputSeconds * 1e9)
        for vectorCount in [1, DeliveryPath.channels] {
            for path in paths {
                progress("throughput: \(path.name) through \(vectorCount) vector\(vectorCount == 1 ? "" : "s")")
                let counters = (0..<vectorCount).map { counter(guest, path.vectors[$0]) }
                var last = counters.map { irqfd_load32($0) }
                var lastChange = [UInt64](repeating: 0, count: vectorCount)
                var handled = 0
                let start = bench_floor_now_ns()
                for c in 0..<vectorCount {
                    lastChange[c] = start
                    path.signal(c)
                }
                var now = start
                var spins: UInt32 = 0
                while now - start < duration {
                    for c in 0..<vectorCount {
                        let value = irqfd_load32(counters[c])
                        if value != last[c] {
                            handled += Int(value &- last[c])
                            last[c] = value
                            lastChange[c] = now
                            path.signal(c)
                        }
                    }
                    spins &+= 1
                    if spins & 0x3F == 0 || vectorCount > 1 { now = bench_floor_now_ns() }
                    if let stuck = lastChange.firstIndex(where: { now > $0 + 2_000_000_000 }) {
                        throw .lost(
                            path: path.name, vector: path.vectors[stuck], during: "throughput (\(vectorCount) vectors)")
                    }
                }
                let elapsed = Double(bench_floor_now_ns() - start) / 1e9
                // Let the last signals land before the next path starts.
                _ = guest.waitUntil(timeout: .seconds(2)) { zip(counters, last).allSatisfy { irqfd_load32($0) != $1 } }
                pause(1_000_000)
                results.append(
                    .init(
                        path: path.name, vectors: vectorCount, perSecond: Double(handled) / elapsed, handled: handled,
                        seconds: elapsed))
            }
        }
        return results
    }

    private func measureBursts(_ guest: TinyVM, _ paths: [DeliveryPath]) throws(BenchError) -> [BenchReport.Burst] {
        var results: [BenchReport.Burst] = []
        for path in paths {
            progress("bursts: \(path.name), \(options.burstCount) x \(options.burstSize) signals")
            let counter = counter(guest, path.vectors[0])
            var delivered = 0
            for _ in 0..<options.burstCount {
                let before = irqfd_load32(counter)
                for _ in 0..<options.burstSize { path.signal(0) }
                // Settled: the full count arrived, or something arrived and then
                // nothing new for 20 ms. Nothing at all within 2 s: lost.
                let sent = bench_floor_now_ns()
                var seen = irqfd_load32(counter)
                var quietSince = sent
                while seen &- before < UInt32(options.burstSize) {
                    let now = irqfd_load32(counter)
                    let time = bench_floor_now_ns()
                    if now != seen {
                        seen = now
                        quietSince = time
                    } else if seen != before, time - quietSince > 20_000_000 {
                        break
                    } else if seen == before, time - sent > 2_000_000_000 {
                        throw .lost(path: path.name, vector: path.vectors[0], during: "a burst")
                    }
                }
                delivered += Int(seen &- before)
                pause(1_000_000)
            }
            results.append(
                .init(
                    path: path.name, bursts: options.burstCount, signalsPerBurst: options.burstSize,
                    delivered: delivered))
        }
        return results
    }

    // MARK: - Helpers shared by the sections

    static func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted.count % 2 == 1
            ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    /// Sleeps 5 ms before a timed step, so work the kernel deferred from the
    /// previous step (closing thousands of eventfds, irqfd shutdown jobs, RCU
    /// callbacks) does not land inside the next one; then spins 200 µs, so the
    /// step starts on a running CPU. Without the spin, whichever side starts
    /// its clock right after the sleep pays the wake-up: the C floors allocate
    /// their table before starting theirs, so the library paid it alone (a
    /// constant 40 µs, 1.7x at N = 1, in an earlier run).
    func settle() {
        usleep(5000)
        pause(200_000)
    }

    func elapsedUs(since start: UInt64) -> Double { Double(bench_floor_now_ns() - start) / 1000 }

    // MARK: - Mask + unmask

    private func measureMaskUnmask(_ guest: TinyVM, gsiLimit: Int) throws(BenchError) -> BenchReport.MaskUnmask {
        let irqfd = guest.irqfd
        let counters = guest.vm.counters
        let vmfd = guest.vm.rawDescriptor
        let route: KVMIrqFdRoute
        do throws(IrqFdError) {
            route = try irqfd.newRoute()
            try route.setMsi(MsiMessage(destination: 0, vector: 0x90))
        } catch { throw .library("mask/unmask route", error) }
        // The floor's eventfd on its own GSI, its entry pushed next to the library's.
        let floor = try FloorIrqFd.arm(
            vmfd: vmfd, gsi: UInt32(gsiLimit - 1), message: MsiMessage(destination: 0, vector: 0x91),
            beside: irqfd.pushedEntries)
        // Kept until the section returns: its deinit deassigns and closes the eventfd the cycles use.
        defer { withExtendedLifetime(floor) {} }
        let efd = floor.eventfd
        let rawGsi = floor.gsi

        let blocks = 20
        let perBlock = max(1, options.maskCycles / blocks)
        var library: [Double] = []
        var raw: [Double] = []
        let before = counters.snapshot
        for block in -1..<blocks {  // block -1 warms up both sides
            progress("mask + unmask: block \(block + 2)/\(blocks + 1)")
            let start = bench_floor_now_ns()
            do throws(IrqFdError) {
                for _ in 0..<perBlock {
                    try route.mask()
                    try route.unmask()
                }
            } catch { throw .library("mask/unmask", error) }
            let libraryNs = bench_floor_now_ns() - start
            var rawNs: UInt64 = 0
            let r = bench_floor_mask_cycles(vmfd, efd, rawGsi, UInt32(perBlock), &rawNs)
            guard r == 0 else { throw .floor("KVM_IRQFD deassign/assign", r) }
            if block >= 0 {
                library.append(Double(libraryNs) / 1000 / Double(perBlock))
                raw.append(Double(rawNs) / 1000 / Double(perBlock))
            }
        }
        let delta = counters.snapshot - before
        let cycles = perBlock * (blocks + 1)
        var result = BenchReport.MaskUnmask(
            usPerCycle: Self.median(library), rawUsPerCycle: Self.median(raw), pushes: delta.routingPushes,
            irqfdCallsPerCycle: Double(delta.irqfdAssigns + delta.irqfdDeassigns) / Double(cycles),
            cycles: perBlock * blocks)
        result.ratio = BenchReport.PairedRatio(path: library, floor: raw)
        return result
    }

    // MARK: - Lifecycle

    private func measureLifecycle(_ guest: TinyVM) throws(BenchError) -> BenchReport.Lifecycle {
        let irqfd = guest.irqfd
        let count = options.lifecycleCount
        let m = MsiMessage(destination: 0, vector: 0xA0)
        var bare = 0.0
        var programmed = 0.0
        do throws(IrqFdError) {
            progress("route lifecycle: newRoute + drop")
            var start = bench_floor_now_ns()
            for _ in 0..<count { _ = try irqfd.newRoute() }
            bare = Double(count) / (Double(bench_floor_now_ns() - start) / 1e9)
            progress("route lifecycle: newRoute + setMsi + drop")
            start = bench_floor_now_ns()
            for _ in 0..<count {
                let route = try irqfd.newRoute()
                try route.setMsi(m)
            }
            programmed = Double(count) / (Double(bench_floor_now_ns() - start) / 1e9)
        } catch { throw .library("route lifecycle", error) }
        progress("route lifecycle: C floor")
        var ns: UInt64 = 0
        let r = bench_floor_lifecycle(guest.vm.rawDescriptor, 24, UInt32(count), m.address, m.data, &ns)
        guard r == 0 else { throw .floor("route lifecycle", r) }
        let raw = Double(count) / (Double(ns) / 1e9)

        progress("route lifecycle: memory per live route")
        let live = irqfd.gsiCapacity
        var routes: [KVMIrqFdRoute] = []
        routes.reserveCapacity(live)
        var heap = 0.0
        var rss = 0.0
        do throws(IrqFdError) {
            // Once untimed so the allocator's arenas and the table's buffers exist already.
            for pass in 0..<2 {
                // Heap: bytes held by the live routes once the allocator has its
                // arenas (pass 1). RSS: free pages handed back first (malloc_trim),
                // so the delta is the pages the live routes occupy.
                bench_floor_trim()
                let heap0 = Self.heapInUse()
                let rss0 = Self.residentBytes()
                try irqfd.withBatch { () throws(IrqFdError) in
                    for i in 0..<live {
                        let route = try irqfd.newRoute()
                        try route.setMsi(Self.programMessage(i, generation: 0))
                        routes.append(route)
                    }
                }
                if pass == 1 {
                    heap = Double(Self.heapInUse() - heap0) / Double(live)
                    rss = Double(Self.residentBytes() - rss0) / Double(live)
                }
                try irqfd.withBatch { () throws(IrqFdError) in routes.removeAll(keepingCapacity: true) }
            }
        } catch { throw .library("memory per route", error) }
        return .init(
            createsDropsPerSecond: bare, programmedPerSecond: programmed, rawProgrammedPerSecond: raw,
            liveRoutes: live, heapBytesPerRoute: heap, rssBytesPerRoute: rss)
    }

    /// Bytes malloc has handed out and not taken back (mallinfo2: arena + mmapped).
    private static func heapInUse() -> Int {
        Int(bench_floor_heap_in_use())
    }

    /// Resident set size (/proc/self/statm, second field, in pages).
    private static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
#endif
