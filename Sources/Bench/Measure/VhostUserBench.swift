#if os(Linux)
import CBenchFloor
import CLinuxKVM
import Foundation
import Glibc
import IrqFdCore
import KVM
import MSIX
import PCI
import SystemPackage
import TinyVM
import VhostUser
import Virtio

/// Where virtio_blk_bench.S takes its parameters and leaves its results.
enum VirtioBlkBenchLayout {
    static let depth: UInt64 = 0x5C0, count: UInt64 = 0x5C4, stamp: UInt64 = 0x5C8
    static let phase: UInt64 = 0x5E0, completed: UInt64 = 0x5E4, failed: UInt64 = 0x5E8
    static let rounds: UInt64 = 0x5EC, gate: UInt64 = 0x5F0
    static let tsc0: UInt64 = 0x450, tsc1: UInt64 = 0x458
    /// The guest's own counters (for a diagnosis when a round stalls).
    static let availableIndex: UInt64 = 0x430, usedIndex: UInt64 = 0x434, roundSubmitted: UInt64 = 0x438,
        roundCompleted: UInt64 = 0x43C
    /// The used ring's flags and index (guest-physical 0x22000).
    static let usedRing: UInt64 = 0x22000
    /// Interrupts on IDT vector 0x41 (InterruptCounterLayout.count(cpu: 0, vector: 0x41)).
    static let queueInterrupts: UInt64 = 0x8104
    static func sample(_ k: Int) -> UInt64 { 0x40000 + 4 * UInt64(k) }
    static let maxSamples = 16384
    static let maxDepth = 32
    /// The IDT vector the host wakes the guest with between rounds (not the queue's 0x41).
    static let wakeVector: UInt32 = 0x50
}

/// The run's sizes for the vhost-user section.
extension BenchOptions {
    /// Interleaved latency rounds (each mode, the floor and raw irqfd once per round).
    var vhostRounds: Int { quick ? 6 : 20 }
    /// Requests per latency round and side.
    var vhostLatencyPerRound: Int { quick ? 60 : 500 }
    /// Throughput rounds per depth.
    var vhostThroughputRounds: Int { quick ? 2 : 3 }
    /// Requests per throughput round.
    var vhostThroughputRequests: Int { quick ? 200 : 2000 }
    /// Mask + unmask cycles per round and side.
    var vhostMaskCycles: Int { quick ? 20 : 100 }
}

/// One TinyVM running the benchmark guest with a virtio-blk device in one
/// delivery mode, served by a back-end process of its own.
/// Not Sendable: the benchmark thread makes, drives and closes it.
final class BenchDisk {
    let mode: InterruptDelivery
    let backend: BlockBackend
    let vm: TinyVM
    let device: VirtioBlkDevice
    private var roundsRun: UInt32 = 0
    private var closed = false
    typealias L = VirtioBlkBenchLayout

    init(mode: InterruptDelivery, kind: DiskBackendKind, image: String) throws(BenchError) {
        self.mode = mode
        do { backend = try BlockBackend(kind: kind, image: image) } catch { throw .setup("\(kind): \(error)") }
        do {
            vm = try TinyVM(.init(cpus: 1))
            device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath, delivery: mode)
            try vm.load(GuestProgram.virtioBlkBench.image)
        } catch {
            backend.stop()
            throw .setup("virtio-blk guest (\(kind), \(mode)): \(error)")
        }
        vm.start()
        guard vm.waitUntil(timeout: .seconds(60), { vm.memory.read32(at: L.phase) == 1 }) else {
            let why = vm.hasEnded ? "\(vm.wait())" : "timed out"
            close()
            throw .setup(
                "the virtio-blk bench guest (\(kind), \(mode)) did not reach DRIVER_OK: \(why); \(device.counters)")
        }
    }

    /// One round: `count` reads with `depth` in flight. Returns the stamped
    /// samples (TSC ticks, notify -> handler; empty unless `stamp`), the
    /// round's TSC ticks, and requests whose status was not 0.
    func round(depth: Int, count: Int, stamp: Bool) throws(BenchError) -> (
        samples: [UInt32], ticks: UInt64, failed: Int, hostNs: UInt64
    ) {
        precondition(
            depth >= 1 && depth <= L.maxDepth && count >= depth && (!stamp || (depth == 1 && count <= L.maxSamples)))
        let memory = vm.memory
        let failedBefore = memory.read32(at: L.failed)
        memory.write32(UInt32(depth), at: L.depth)
        memory.write32(UInt32(count), at: L.count)
        memory.write32(stamp ? 1 : 0, at: L.stamp)
        roundsRun += 1
        let target = roundsRun
        let opened = bench_floor_now_ns()
        memory.write32(target, at: L.gate)
        // Wakes the guest's HLT; any interrupt does (the guest then checks the gate).
        _ = bench_floor_signal_msi(vm.vm.rawDescriptor, 0xFEE0_0000, L.wakeVector)
        guard vm.waitUntil(timeout: .seconds(60), { memory.read32(at: L.rounds) == target }) else {
            throw .setup(
                "\(mode) guest round \(target) (depth \(depth), \(count) requests) did not finish (\(vm.hasEnded ? "guest ended: \(vm.wait())" : "timed out")): "
                    + "\(memory.read32(at: L.completed)) completed in all; this round \(memory.read32(at: L.roundSubmitted)) submitted, "
                    + "\(memory.read32(at: L.roundCompleted)) completed; available index \(memory.read32(at: L.availableIndex)), "
                    + "used index \(memory.read32(at: L.usedIndex)) (ring \(memory.read32(at: L.usedRing) >> 16)); "
                    + "\(memory.read32(at: L.queueInterrupts)) queue interrupts; device: \(device.counters)")
        }
        let hostNs = bench_floor_now_ns() - opened
        let ticks = memory.read64(at: L.tsc1) &- memory.read64(at: L.tsc0)
        let samples = stamp ? (0..<count).map { memory.read32(at: L.sample($0)) } : []
        return (samples, ticks, Int(memory.read32(at: L.failed) &- failedBefore), hostNs)
    }

    /// Stops the guest, resets the device (the back-end stops its rings), closes the connection, stops the back-end.
    func close() {
        guard !closed else { return }
        closed = true
        tearDownGuestRig(vm: vm, device: device) { backend.stop() }
    }

    deinit { close() }
}

/// The floor: the same back-end driven from the host with no guest, through
/// ``HostVirtqueueDriver`` (kick eventfd written, call eventfd waited on).
/// Its connection is also where QEMU's mask strategy is measured.
final class FloorDisk {
    let backend: BlockBackend
    let frontend: VhostUserFrontend
    let memory: MemfdGuestMemory
    let queue: HostVirtqueueDriver

    init(kind: DiskBackendKind, image: String) throws(BenchError) {
        do { backend = try BlockBackend(kind: kind, image: image) } catch { throw .setup("\(kind): \(error)") }
        do throws(VhostUserError) {
            (frontend, memory) = try connectFloor(
                socketPath: backend.socketPath,
                protocolFeatures: VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.config
                    | VhostUserProtocolFeature.multiQueue)
            queue = try HostVirtqueueDriver(memory: memory, queue: 0, size: 128, base: 0, maxData: 512)
            try queue.start(frontend)
        } catch {
            backend.stop()
            throw .setup("floor connection to \(kind): \(error)")
        }
        // qemu-storage-daemon signals the call fd once at SET_VRING_CALL: let it land, then drop it.
        usleep(20_000)
        _ = queue.call.consume()
    }

    /// One read with one request in flight: the request is published, then
    /// the time runs from the kick to the call eventfd's wake-up. Nanoseconds.
    func request() throws(BenchError) -> UInt64 {
        queue.submit(.read, sector: 0, length: 512, slot: 0)
        let start = bench_floor_now_ns()
        queue.kick.signal()
        let signalled = queue.call.wait(timeout: .seconds(2))
        let end = bench_floor_now_ns()
        guard signalled > 0, queue.collect(1, timeout: .seconds(2)).count == 1, queue.status(slot: 0) == 0 else {
            throw .setup(
                "the floor's request against \(backend.kind) did not complete (status \(queue.status(slot: 0)))")
        }
        return end - start
    }

    func close() {
        frontend.close()
        backend.stop()
    }

    deinit { close() }
}

/// QEMU's strategy for masking a vhost queue's vector, for the comparison
/// only (no device uses it): `vhost_virtqueue_mask` in QEMU's
/// hw/virtio/vhost.c points the back-end at a "masked notifier" eventfd with
/// SET_VRING_CALL on mask, and back at the real call fd on unmask (then tests
/// the masked notifier for a completion that came in between). Each
/// SET_VRING_CALL is a round trip when REPLY_ACK is negotiated.
struct QemuVhostMaskStrategy {
    let frontend: VhostUserFrontend
    let queue: UInt32
    let callFD: FileDescriptor
    let maskedNotifier: HostEventFD

    /// SET_VRING_CALL(masked notifier).
    func mask() throws(VhostUserError) {
        try frontend.setVringCall(queue: queue, descriptor: maskedNotifier.fileDescriptor)
    }

    /// SET_VRING_CALL(call fd), then the pending check on the masked notifier.
    func unmask() throws(VhostUserError) -> Bool {
        try frontend.setVringCall(queue: queue, descriptor: callFD)
        return maskedNotifier.consume() > 0
    }
}

/// `irqfd bench --only vhost-user`: see ``BenchReport/VhostUser``.
///
/// Request latency is stamped inside the guest: RDTSC before the notify
/// write, RDTSC on entry to the queue vector's handler (no exit for either;
/// KVM_GET_TSC_KHZ converts). The floor and raw irqfd are timed on the host
/// with CLOCK_MONOTONIC. Modes, floor and raw irqfd run in interleaved
/// rounds (the order rotating each round), so every ratio is paired by round.
final class VhostUserBench {
    let options: BenchOptions
    let progress: (String) -> Void
    static let modes: [InterruptDelivery] = [.irqfd, .relay, .userspace]
    static let depths = [1, 8, 32]

    init(options: BenchOptions, progress: @escaping (String) -> Void) {
        self.options = options
        self.progress = progress
    }

    func run() throws(BenchError) -> BenchReport.VhostUser {
        var skipped: [String] = []
        var kinds: [DiskBackendKind] = []
        if DiskBackendKind.qemuStorageDaemonPath != nil {
            kinds.append(.qemuStorageDaemon)
        } else {
            let line =
                "vhost-user: qemu-storage-daemon is not installed: its latency, throughput and the mask + unmask comparison are skipped"
            progress(line)
            skipped.append(line)
        }
        if BlockBackend.embeddedExecutable() != nil {
            kinds.append(.embedded)
        } else {
            skipped.append("vhost-user: irqfd-vhost-user-blk was not built: the embedded back-end is skipped")
        }

        let directory = NSTemporaryDirectory() + "irqfd-bench-vhost-\(getpid())"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func image(_ name: String) throws(BenchError) -> String {
            let path = "\(directory)/\(name).img"
            guard FileManager.default.createFile(atPath: path, contents: Data(count: 1 << 20)) else {
                throw .setup("cannot create \(path)")
            }
            return path
        }

        // Raw irqfd: the delivery section's `raw` path on an interrupt-counting guest of its own.
        progress("vhost-user: starting the raw irqfd guest")
        let rawGuest = try startInterruptCountingGuest()
        defer {
            rawGuest.stop()
            _ = rawGuest.wait()
        }
        let gsiLimit = rawGuest.vm.checkExtension(.irqRouting)
        let raw = try DeliveryPath.raw(rawGuest, vectors: [0x48], gsis: [UInt32(gsiLimit - 1)])
        defer { raw.close() }
        let rawCounter = rawGuest.memory.base + Int(InterruptCounterLayout.count(cpu: 0, vector: 0x48))
        let tscKHz = Double(irqfd_ioctl_val(rawGuest.vm.rawDescriptor, 0xAEA3, 0))  // KVM_GET_TSC_KHZ on the VM
        guard tscKHz > 0 else {
            throw .setup("KVM_GET_TSC_KHZ failed: errno \(errno); the guest's RDTSC stamps cannot be converted")
        }
        func rawOnce() throws(BenchError) -> UInt64 {
            let before = irqfd_load32(rawCounter)
            let start = bench_floor_now_ns()
            raw.signal(0)
            var spins: UInt32 = 0
            while irqfd_load32(rawCounter) == before {
                spins &+= 1
                if spins & 0x3FF == 0, bench_floor_now_ns() - start > 2_000_000_000 {
                    throw .lost(path: "raw", vector: 0x48, during: "the vhost-user section's raw irqfd rounds")
                }
            }
            let end = bench_floor_now_ns()
            let until = end + options.gapNanoseconds  // back in HLT before the next one
            while bench_floor_now_ns() < until {}
            return end - start
        }

        var rawAll: [UInt64] = []
        var backends: [BenchReport.VhostUserBackend] = []
        var targets: [BenchReport.TargetCheck] = []
        var mask: BenchReport.VhostUserMaskUnmask?
        var tscChecks: [Double] = []
        for kind in kinds {
            progress("vhost-user: starting \(kind) x \(Self.modes.count + 1) and the guests")
            let floor = try FloorDisk(kind: kind, image: try image("\(kind)-floor"))
            var disks: [BenchDisk] = []
            defer {
                for disk in disks { disk.close() }
                floor.close()
            }
            for mode in Self.modes {
                disks.append(try BenchDisk(mode: mode, kind: kind, image: try image("\(kind)-\(mode)")))
            }
            let toNs = { (ticks: UInt32) in UInt64(Double(ticks) * 1e6 / tscKHz) }

            // Latency: warm-up, then interleaved rounds.
            let perRound = options.vhostLatencyPerRound
            for disk in disks { _ = try disk.round(depth: 1, count: 20, stamp: true) }
            for _ in 0..<20 {
                _ = try floor.request()
                _ = try rawOnce()
            }
            var latencies = [RoundLatencies](repeating: .init(), count: disks.count)
            var modeFailed = [Int](repeating: 0, count: disks.count)
            var floorLatency = RoundLatencies()
            var raw = RoundLatencies()
            // The modes, then the floor, then raw irqfd.
            try interleave(rounds: options.vhostRounds, sides: disks.count + 2) { r in
                progress(
                    "vhost-user \(kind): latency round \(r + 1)/\(options.vhostRounds), \(perRound) requests per side")
            } _: { item throws(BenchError) in
                switch item {
                case disks.count:
                    var ns: [UInt64] = []
                    for _ in 0..<perRound { ns.append(try floor.request()) }
                    floorLatency.add(round: ns)
                case disks.count + 1:
                    var ns: [UInt64] = []
                    for _ in 0..<perRound { ns.append(try rawOnce()) }
                    raw.add(round: ns)
                default:
                    let result = try disks[item].round(depth: 1, count: perRound, stamp: true)
                    latencies[item].add(round: result.samples.map(toNs))
                    modeFailed[item] += result.failed
                }
            }
            rawAll += raw.all

            // Throughput: per depth, interleaved rounds of the modes.
            var throughput: [BenchReport.VhostUserThroughput] = []
            let requests = options.vhostThroughputRequests
            for depth in Self.depths {
                var rates = [[Double]](repeating: [], count: disks.count)
                try interleave(rounds: options.vhostThroughputRounds, sides: disks.count) { r in
                    progress(
                        "vhost-user \(kind): throughput at depth \(depth), round \(r + 1)/\(options.vhostThroughputRounds)"
                    )
                } _: { i throws(BenchError) in
                    let result = try disks[i].round(depth: depth, count: requests, stamp: false)
                    modeFailed[i] += result.failed
                    rates[i].append(Double(requests) / (Double(result.ticks) / (tscKHz * 1000)))
                    tscChecks.append(Double(result.ticks) / tscKHz * 1e6 / Double(result.hostNs))
                }
                let userspace = Self.modes.firstIndex(of: .userspace)!
                for (i, mode) in Self.modes.enumerated() {
                    throughput.append(
                        .init(
                            mode: mode.rawValue, depth: depth, perSecond: BenchRunner.median(rates[i]),
                            requests: requests * rates[i].count,
                            overUserspace: mode == .userspace
                                ? nil : BenchReport.PairedRatio(path: rates[i], floor: rates[userspace])))
                }
            }

            let irqfd = latencies[Self.modes.firstIndex(of: .irqfd)!]
            let userspace = latencies[Self.modes.firstIndex(of: .userspace)!]
            let relay = latencies[Self.modes.firstIndex(of: .relay)!]
            let budget = zip(floorLatency.p50, raw.p50).map { $0 + 1.2 * $1 }
            var ratios: [BenchReport.NamedRatio] = []
            ratios.append("irqfd_p50_over_budget", .init(path: irqfd.p50, floor: budget))
            ratios.append("irqfd_over_userspace_p50", .init(path: irqfd.p50, floor: userspace.p50))
            ratios.append("irqfd_over_userspace_p99", .init(path: irqfd.p99, floor: userspace.p99))
            ratios.append("relay_over_userspace_p50", .init(path: relay.p50, floor: userspace.p50))
            let result = BenchReport.VhostUserBackend(
                backend: kind.rawValue,
                latency: Self.modes.enumerated().map { i, mode in
                    .init(
                        mode: mode.rawValue, latency: LatencySummary(nanoseconds: latencies[i].all),
                        failed: modeFailed[i])
                },
                floor: LatencySummary(nanoseconds: floorLatency.all), throughput: throughput, ratios: ratios)
            backends.append(result)
            targets += Self.targets(result)

            if kind == .qemuStorageDaemon {
                mask = try measureMask(disk: disks[Self.modes.firstIndex(of: .irqfd)!], floor: floor)
                if let mask { targets += Self.maskTargets(mask) }
            }
        }
        if mask == nil, kinds.contains(.qemuStorageDaemon) == false {
            skipped.append("vhost-user: mask + unmask against qemu-storage-daemon skipped (not installed)")
        }
        // Each target's paired ratio, by name, for the table's interval column.
        var targetRatios: [BenchReport.NamedRatio] = []
        for b in backends {
            for (key, prefix) in [
                ("irqfd_over_userspace_p50", "irqfd p50 / userspace"),
                ("irqfd_over_userspace_p99", "irqfd p99 / userspace"),
            ] {
                if let ratio = b.ratio(key),
                    let target = targets.first(where: { $0.name.hasPrefix("vhost-user \(b.backend): \(prefix)") })
                {
                    targetRatios.append(.init(name: target.name, ratio: ratio))
                }
            }
        }
        if let mask {
            for (ratio, spacing) in [(mask.oursOverQemu, "isolated"), (mask.backToBack?.oursOverQemu, "back to back")] {
                if let ratio,
                    let target = targets.first(where: { $0.name.hasPrefix("vhost-user mask+unmask, \(spacing)") })
                {
                    targetRatios.append(.init(name: target.name, ratio: ratio))
                }
            }
        }
        var virtioFs: BenchReport.VirtioFs?
        if FileSystemBackend.isInstalled {
            virtioFs = try VirtioFsBench(options: options, progress: progress).run(tscKHz: tscKHz)
        } else {
            let line = "vhost-user: virtiofsd is not installed: the virtio-fs READ latency is skipped"
            progress(line)
            skipped.append(line)
        }
        return .init(
            backends: backends, rawIrqfd: LatencySummary(nanoseconds: rawAll), maskUnmask: mask, targets: targets,
            skipped: skipped, tscKHz: tscKHz, rounds: options.vhostRounds, targetRatios: targetRatios,
            tscCheck: BenchRunner.median(tscChecks), virtioFs: virtioFs)
    }

    /// The mask + unmask targets: ours cheaper than QEMU's strategy, at both spacings.
    static func maskTargets(_ mask: BenchReport.VhostUserMaskUnmask) -> [BenchReport.TargetCheck] {
        func note(_ ours: Double, _ theirs: Double, _ ratio: BenchReport.PairedRatio?) -> String {
            let r = ratio?.median ?? 0
            return String(
                format: "ours %.1f µs (2 KVM_IRQFD, no message), QEMU's %.1f µs (2 SET_VRING_CALL%@): ours is %.1fx %@",
                ours, theirs, mask.replyAck ? " + REPLY_ACK" : "", r >= 1 || r == 0 ? r : 1 / r,
                r >= 1 ? "cheaper" : "MORE EXPENSIVE")
        }
        var checks: [BenchReport.TargetCheck] = [
            .init(
                name: "vhost-user mask+unmask, isolated cycles: ours / QEMU's SET_VRING_CALL strategy",
                paired: mask.oursOverQemu, limit: 1.0, note: note(mask.oursUs, mask.qemuStrategyUs, mask.qemuOverOurs))
        ]
        if let b = mask.backToBack {
            checks.append(
                .init(
                    name: "vhost-user mask+unmask, back to back: ours / QEMU's SET_VRING_CALL strategy",
                    paired: b.oursOverQemu, limit: 1.0, note: note(b.oursUs, b.qemuStrategyUs, b.qemuOverOurs)))
        }
        return checks
    }

    /// The targets for one back-end: irqfd delivery beats userspace delivery
    /// of the same requests, paired round by round. There is no absolute
    /// latency target: a request's time is mostly the guest's own emulated
    /// instructions and its notify write, which no floor here measures.
    static func targets(_ b: BenchReport.VhostUserBackend) -> [BenchReport.TargetCheck] {
        var checks: [BenchReport.TargetCheck] = []
        let irqfd = b.latency(InterruptDelivery.irqfd.rawValue)?.latency
        let userspace = b.latency(InterruptDelivery.userspace.rawValue)?.latency
        for (name, key, value) in [
            ("p50", "irqfd_over_userspace_p50", \LatencySummary.p50Us),
            ("p99", "irqfd_over_userspace_p99", \LatencySummary.p99Us),
        ] {
            let a = irqfd?[keyPath: value] ?? 0
            let u = userspace?[keyPath: value] ?? 0
            checks.append(
                .init(
                    name: "vhost-user \(b.backend): irqfd \(name) / userspace \(name) (must beat it)",
                    paired: b.ratio(key), limit: 1.0,
                    note: String(
                        format: "all samples: irqfd %.1f µs, userspace %.1f µs; irqfd is %.1f µs (%.0f%%) %@", a, u,
                        abs(u - a),
                        u > 0 ? 100 * abs(u - a) / u : 0, a <= u ? "faster" : "SLOWER")))
        }
        return checks
    }

    /// Mask + unmask of queue 0's vector: ours through the irqfd device's
    /// MSI-X emulator, QEMU's strategy on the floor's connection, both to
    /// qemu-storage-daemon, and the C floor of ours (KVM_IRQFD deassign +
    /// assign of an eventfd on a GSI of the same VM). Two spacings, each in
    /// interleaved rounds: `isolated` alternates the sides cycle by cycle (each
    /// cycle follows the other sides' work, as a guest's occasional mask does);
    /// `back_to_back` runs a block of cycles per side (the delivery section's method).
    private func measureMask(disk: BenchDisk, floor: FloorDisk) throws(BenchError) -> BenchReport.VhostUserMaskUnmask {
        let masked: HostEventFD
        do { masked = try HostEventFD() } catch { throw .setup("eventfd: \(error)") }
        let qemu = QemuVhostMaskStrategy(
            frontend: floor.frontend, queue: 0, callFD: floor.queue.call.fileDescriptor, maskedNotifier: masked)
        let emulator = disk.device.emulator
        let control = UInt64(MsixLayout.entrySize + 12)  // vector 1 (queue 0): vector control
        let cycles = options.vhostMaskCycles

        // The C floor's eventfd on the VM's last GSI, its MSI entry pushed next to the library's.
        let vm = disk.vm.vm
        let vmfd = vm.rawDescriptor
        let floorRoute = try FloorIrqFd.arm(
            vmfd: vmfd, gsi: UInt32(vm.checkExtension(.irqRouting) - 1),
            message: MsiMessage(destination: 0, vector: 0x91),
            beside: disk.vm.irqfd.pushedEntries)
        // Kept until the measurement returns: its deinit deassigns and closes the eventfd the cycles use.
        defer { withExtendedLifetime(floorRoute) {} }
        let efd = floorRoute.eventfd
        let rawGsi = floorRoute.gsi

        func oursCycle() {
            emulator.write(bar: 1, offset: control, size: 4, value: 1)
            emulator.write(bar: 1, offset: control, size: 4, value: 0)
        }
        func qemuCycle() throws(BenchError) {
            do throws(VhostUserError) {
                try qemu.mask()
                _ = try qemu.unmask()
            } catch { throw .setup("QEMU's mask strategy against qemu-storage-daemon: \(error)") }
        }
        func rawCycles(_ n: Int) throws(BenchError) -> Double {
            var ns: UInt64 = 0
            let r = bench_floor_mask_cycles(vmfd, efd, rawGsi, UInt32(n), &ns)
            guard r == 0 else { throw .floor("KVM_IRQFD deassign/assign", r) }
            return Double(ns) / 1000
        }
        func timed(_ body: () throws(BenchError) -> Void) throws(BenchError) -> Double {
            let start = bench_floor_now_ns()
            try body()
            return Double(bench_floor_now_ns() - start) / 1000
        }

        var isolated = (ours: [Double](), qemu: [Double](), raw: [Double]())
        var oursAll: [Double] = []
        var qemuAll: [Double] = []
        var back = (ours: [Double](), qemu: [Double](), raw: [Double]())
        var oursMessages = 0
        var oursIrqfdCalls = 0
        var qemuMessages = 0
        var oursCycles = 0
        for round in -1..<options.vhostRounds {  // round -1 warms every side up
            progress("vhost-user: mask + unmask, round \(round + 2)/\(options.vhostRounds + 1)")
            let messages = disk.device.frontend.messagesSent
            let counters = vm.counters.snapshot
            let sent = floor.frontend.messagesSent
            // Isolated: one cycle of each side in turn; a round's value is its
            // median cycle (robust to the scheduler's outliers; the means are kept too).
            var o: [Double] = []
            var q: [Double] = []
            var r: [Double] = []
            for _ in 0..<cycles {
                o.append(try timed { oursCycle() })
                q.append(try timed { () throws(BenchError) in try qemuCycle() })
                r.append(try rawCycles(1))
            }
            // Back to back: a block per side; the value is the block's time per cycle.
            let ob = try timed { for _ in 0..<cycles { oursCycle() } } / Double(cycles)
            let qb = try timed { () throws(BenchError) in for _ in 0..<cycles { try qemuCycle() } } / Double(cycles)
            let rb = try rawCycles(cycles) / Double(cycles)
            let delta = vm.counters.snapshot - counters
            guard round >= 0 else { continue }
            isolated.ours.append(BenchRunner.median(o))
            isolated.qemu.append(BenchRunner.median(q))
            isolated.raw.append(BenchRunner.median(r))
            oursAll += o
            qemuAll += q
            back.ours.append(ob)
            back.qemu.append(qb)
            back.raw.append(rb)
            oursCycles += 2 * cycles
            oursMessages += disk.device.frontend.messagesSent - messages
            oursIrqfdCalls += delta.irqfdAssigns + delta.irqfdDeassigns
            qemuMessages += floor.frontend.messagesSent - sent
        }
        guard let qemuOverOurs = BenchReport.PairedRatio(path: isolated.qemu, floor: isolated.ours) else {
            throw .setup("mask + unmask: no rounds measured")
        }
        let total = Double(max(1, oursCycles))
        var result = BenchReport.VhostUserMaskUnmask(
            oursUs: BenchRunner.median(isolated.ours), qemuStrategyUs: BenchRunner.median(isolated.qemu),
            qemuOverOurs: qemuOverOurs,
            oursMessagesPerCycle: Double(oursMessages) / total, oursIrqfdCallsPerCycle: Double(oursIrqfdCalls) / total,
            qemuMessagesPerCycle: Double(qemuMessages) / total,
            replyAck: floor.frontend.protocolFeatures & VhostUserProtocolFeature.replyAck != 0, cycles: oursCycles / 2)
        result.oursOverQemu = BenchReport.PairedRatio(path: isolated.ours, floor: isolated.qemu)
        result.oursMeanUs = oursAll.reduce(0, +) / Double(max(1, oursAll.count))
        result.qemuStrategyMeanUs = qemuAll.reduce(0, +) / Double(max(1, qemuAll.count))
        result.rawUs = BenchRunner.median(isolated.raw)
        result.oursOverRaw = BenchReport.PairedRatio(path: isolated.ours, floor: isolated.raw)
        result.backToBack = .init(
            oursUs: BenchRunner.median(back.ours), qemuStrategyUs: BenchRunner.median(back.qemu),
            rawUs: BenchRunner.median(back.raw),
            oursOverQemu: BenchReport.PairedRatio(path: back.ours, floor: back.qemu),
            qemuOverOurs: BenchReport.PairedRatio(path: back.qemu, floor: back.ours),
            oursOverRaw: BenchReport.PairedRatio(path: back.ours, floor: back.raw))
        return result
    }
}
#endif
