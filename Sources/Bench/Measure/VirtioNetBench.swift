#if os(Linux)
import CBenchFloor
import CLinuxKVM
import Foundation
import Glibc
import PCI
import TinyVM
import VhostUser
import Virtio

/// The run's sizes for the virtio-net part of the vhost-user section.
extension BenchOptions {
    /// Interleaved latency rounds (each mode and the floor once per round).
    var netRounds: Int { quick ? 6 : 20 }
    /// Frames per latency round and side.
    var netLatencyPerRound: Int { quick ? 60 : 400 }
    /// Throughput rounds per batch.
    var netThroughputRounds: Int { quick ? 2 : 3 }
    /// Frames per throughput round.
    var netThroughputFrames: Int { quick ? 256 : 1024 }
}

/// The floor: the same testpmd driven from the host with no guest. Queue 0
/// (receive) has 16 buffers posted, queue 1 (transmit) sends one 60-byte
/// frame at a time: the time runs from the transmit kick to the receive call
/// eventfd waking this thread. One connection (testpmd serves one at a time).
final class NetFloor {
    let frontend: VhostUserFrontend
    let memory: MemfdGuestMemory
    let receive: HostVirtqueueDriver
    let transmit: HostVirtqueueDriver
    static let size: UInt16 = 16
    static let receiveBuffers: UInt64 = 0x4_0000
    static let transmitBuffer: UInt64 = 0x8_0000
    private var receiveAvailable: UInt16 = 0
    private var receiveUsed: UInt16 = 0
    private var transmitAvailable: UInt16 = 0

    init(backend: NetBackend) throws(BenchError) {
        do throws(VhostUserError) {
            (frontend, memory) = try connectFloor(
                socketPath: backend.socketPath, protocolFeatures: VhostUserProtocolFeature.replyAck)
            receive = try HostVirtqueueDriver(memory: memory, queue: 0, size: Self.size, base: 0, maxData: 64)
            transmit = try HostVirtqueueDriver(
                memory: memory, queue: 1, size: Self.size, base: 0x1_0000, maxData: 64)
            for d in 0..<Int(Self.size) {
                descriptor(receive, d, address: Self.receiveBuffers + 0x800 * UInt64(d), length: 0x800, flags: 2)
                publish(receive, head: UInt16(d), index: &receiveAvailable)
            }
            memory.write([UInt8](repeating: 0, count: 12) + (0..<60).map { UInt8($0) }, at: Self.transmitBuffer)
            descriptor(transmit, 0, address: Self.transmitBuffer, length: 72, flags: 0)
            try receive.start(frontend)
            try transmit.start(frontend)
        } catch {
            throw .setup("the virtio-net floor's connection to dpdk-testpmd: \(error)")
        }
        // A frame sent before testpmd's link is up may be dropped (TestpmdProcess.isLinkUp).
        guard backend.process.waitUntilLinkUp() else {
            throw .setup("the virtio-net floor: dpdk-testpmd's link did not come up")
        }
    }

    private func descriptor(_ queue: HostVirtqueueDriver, _ i: Int, address: UInt64, length: UInt32, flags: UInt16) {
        let at = queue.descriptorTable + 16 * UInt64(i)
        memory.store(address, at: at)
        memory.store(length, at: at + 8)
        memory.store(flags, at: at + 12)
        memory.store(UInt16(0), at: at + 14)
    }

    private func publish(_ queue: HostVirtqueueDriver, head: UInt16, index: inout UInt16) {
        memory.store(head, at: queue.availableRing + 4 + 2 * UInt64(index % Self.size))
        index &+= 1
        memory.store(index, at: queue.availableRing + 2)
    }

    /// One frame out and back. Nanoseconds from the transmit kick to the receive call's wake-up.
    func ping() throws(BenchError) -> UInt64 {
        _ = receive.call.consume()
        publish(transmit, head: 0, index: &transmitAvailable)
        let start = bench_floor_now_ns()
        transmit.kick.signal()
        let signalled = receive.call.wait(timeout: .seconds(2))
        let end = bench_floor_now_ns()
        let deadline = ContinuousClock.now + .seconds(2)
        while memory.load(UInt16.self, at: receive.usedRing + 2) == receiveUsed, ContinuousClock.now < deadline {}
        guard signalled > 0, memory.load(UInt16.self, at: receive.usedRing + 2) != receiveUsed else {
            throw .setup("the virtio-net floor's frame did not come back from dpdk-testpmd")
        }
        let id = memory.load(UInt32.self, at: receive.usedRing + 4 + 8 * UInt64(receiveUsed % Self.size))
        receiveUsed &+= 1
        publish(receive, head: UInt16(truncatingIfNeeded: id), index: &receiveAvailable)
        return end - start
    }

    func close() { frontend.close() }

    deinit { close() }
}

/// The virtio-net part of `irqfd bench --only vhost-user`: see ``BenchReport/VirtioNet``.
///
/// Latency is stamped inside the guest (virtio_net.S): RDTSC just before
/// pair 0's transmit notify, RDTSC on entry to the receive vector's handler
/// (no exit for either). Each mode runs in a VM of its own per round against
/// one testpmd (it serves one connection at a time), with the floor in the
/// same rotation, so every ratio is paired by round.
package final class VirtioNetBench {
    let options: BenchOptions
    let progress: (String) -> Void
    static let modes: [InterruptDelivery] = [.irqfd, .relay, .userspace]
    static let batches = [1, 32]

    package init(options: BenchOptions, progress: @escaping (String) -> Void) {
        self.options = options
        self.progress = progress
    }

    /// One guest run in a VM of its own: `frames` 60-byte frames on pair 0,
    /// `batch` in flight, stamped or not. Returns the samples (TSC ticks),
    /// the run's TSC ticks and the frames that came back damaged.
    private func guestRun(
        _ mode: InterruptDelivery, backend: NetBackend, frames: Int, batch: Int, stamp: Bool
    ) throws(BenchError) -> (samples: [UInt32], ticks: UInt64, damaged: Int, tscKHz: Double) {
        typealias L = VirtioNetGuestLayout
        do {
            let vm = try TinyVM(.init(cpus: 1))
            let device = try VirtioNetDevice.attach(to: vm, socketPath: backend.socketPath, delivery: mode)
            defer { device.disconnect() }
            try vm.load(GuestProgram.virtioNet.image)
            let m = vm.memory
            m.write32(UInt32(frames), at: L.frames)
            m.write32(1, at: L.pairs)
            m.write32(UInt32(batch), at: L.batch)
            m.write32(stamp ? 1 : 0, at: L.stamp)
            m.write32(60, at: L.length)
            guard vm.startNetGuest(afterLinkUp: { backend.process.waitUntilLinkUp() }) else {
                vm.stop()
                _ = vm.wait()
                throw BenchError.setup("the virtio-net bench guest (\(mode)): dpdk-testpmd's link did not come up")
            }
            let outcome = vm.wait(timeout: .seconds(120))
            guard outcome == .exited(code: 0) else {
                throw BenchError.setup("the virtio-net bench guest (\(mode)) ended \(outcome); \(device.counters)")
            }
            let tscKHz = Double(irqfd_ioctl_val(vm.vm.rawDescriptor, 0xAEA3, 0))  // KVM_GET_TSC_KHZ
            let samples = stamp ? (0..<min(frames, L.maxSamples)).map { m.read32(at: L.sample($0)) } : []
            let ticks = m.read64(at: L.tscEnd) &- m.read64(at: L.tscStart)
            return (samples, ticks, Int(m.read32(at: L.damaged)), tscKHz)
        } catch let error as BenchError {
            throw error
        } catch {
            throw .setup("the virtio-net bench guest (\(mode)): \(error)")
        }
    }

    package func run() throws(BenchError) -> BenchReport.VirtioNet {
        guard NetBackend.isTestpmdInstalled else {
            let line =
                "virtio-net: dpdk-testpmd is not installed (apt-get install dpdk-dev): latency and frames/s skipped"
            progress(line)
            return .init(
                backend: "dpdk-testpmd", latency: [], floor: LatencySummary(nanoseconds: []), throughput: [],
                ratios: [],
                tscKHz: 0, rounds: 0, skipped: [line])
        }
        progress("virtio-net: starting dpdk-testpmd (it busy-polls a core until the section ends)")
        let backend: NetBackend
        do { backend = try NetBackend(queuePairs: 1) } catch { throw .setup("\(error)") }
        defer { backend.stop() }

        // Warm-up, then interleaved rounds: each mode, then the floor, in a rotating order.
        var tscKHz = try guestRun(.irqfd, backend: backend, frames: 20, batch: 1, stamp: true).tscKHz
        guard tscKHz > 0 else {
            throw .setup("KVM_GET_TSC_KHZ failed: the guest's RDTSC stamps cannot be converted")
        }
        let toNs = { (ticks: UInt32) in UInt64(Double(ticks) * 1e6 / tscKHz) }
        let perRound = options.netLatencyPerRound
        var latencies = [RoundLatencies](repeating: .init(), count: Self.modes.count)
        var damaged = [Int](repeating: 0, count: Self.modes.count)
        var floor = RoundLatencies()
        // The modes, then the floor.
        try interleave(rounds: options.netRounds, sides: Self.modes.count + 1) { r in
            progress("virtio-net: latency round \(r + 1)/\(options.netRounds), \(perRound) frames per side")
        } _: { item throws(BenchError) in
            if item == Self.modes.count {
                let connection = try NetFloor(backend: backend)
                var ns: [UInt64] = []
                for _ in 0..<perRound { ns.append(try connection.ping()) }
                connection.close()
                floor.add(round: ns)
            } else {
                let run = try guestRun(Self.modes[item], backend: backend, frames: perRound, batch: 1, stamp: true)
                tscKHz = run.tscKHz
                latencies[item].add(round: run.samples.map(toNs))
                damaged[item] += run.damaged
            }
            usleep(2000)  // testpmd notices the closed connection before the next
        }

        var throughput: [BenchReport.VirtioNet.Throughput] = []
        let frames = options.netThroughputFrames
        let userspace = Self.modes.firstIndex(of: .userspace)!
        for batch in Self.batches {
            var rates = [[Double]](repeating: [], count: Self.modes.count)
            try interleave(rounds: options.netThroughputRounds, sides: Self.modes.count) { r in
                progress("virtio-net: frames/s at batch \(batch), round \(r + 1)/\(options.netThroughputRounds)")
            } _: { i throws(BenchError) in
                let run = try guestRun(Self.modes[i], backend: backend, frames: frames, batch: batch, stamp: false)
                damaged[i] += run.damaged
                rates[i].append(Double(frames) / (Double(run.ticks) / (run.tscKHz * 1000)))
                usleep(2000)
            }
            for (i, mode) in Self.modes.enumerated() {
                throughput.append(
                    .init(
                        mode: mode.rawValue, batch: batch, perSecond: BenchRunner.median(rates[i]),
                        frames: frames * rates[i].count,
                        overUserspace: mode == .userspace
                            ? nil : BenchReport.PairedRatio(path: rates[i], floor: rates[userspace])))
            }
        }

        let irqfd = latencies[Self.modes.firstIndex(of: .irqfd)!]
        let relay = latencies[Self.modes.firstIndex(of: .relay)!]
        let user = latencies[userspace]
        var ratios: [BenchReport.NamedRatio] = []
        ratios.append("irqfd p50 / floor p50", .init(path: irqfd.p50, floor: floor.p50))
        ratios.append("irqfd p99 / floor p99", .init(path: irqfd.p99, floor: floor.p99))
        ratios.append("irqfd p50 / userspace p50", .init(path: irqfd.p50, floor: user.p50))
        ratios.append("irqfd p99 / userspace p99", .init(path: irqfd.p99, floor: user.p99))
        ratios.append("relay p50 / userspace p50", .init(path: relay.p50, floor: user.p50))
        return .init(
            backend: "dpdk-testpmd",
            latency: Self.modes.enumerated().map { i, mode in
                .init(mode: mode.rawValue, latency: LatencySummary(nanoseconds: latencies[i].all), damaged: damaged[i])
            },
            floor: LatencySummary(nanoseconds: floor.all), throughput: throughput, ratios: ratios, tscKHz: tscKHz,
            rounds: options.netRounds, skipped: [])
    }
}
#endif
