#if os(Linux)
import CBenchFloor
import CLinuxKVM
import Foundation
import Glibc
import PCI
import TinyVM
import VhostUser
import Virtio

/// The file every virtio-fs benchmark side reads: 4 KiB.
private let benchFileName = "bench-4k"
private let readSize = 4096

/// One TinyVM running the virtio-fs guest in benchmark mode (its READs
/// stamped with RDTSC, not compared) in one delivery mode, with a virtiofsd of
/// its own. Not Sendable: the benchmark thread makes, drives and closes it.
final class BenchFileSystem {
    typealias L = VirtioFsGuestLayout
    let mode: InterruptDelivery
    let backend: FileSystemBackend
    let vm: TinyVM
    let device: VirtioFsDevice
    private var target: UInt32 = 0
    /// The IDT vector the host wakes the guest with (not one of the device's 0x40...0x42).
    static let wakeVector: UInt32 = 0x50
    private var closed = false

    init(mode: InterruptDelivery, share: String) throws(BenchError) {
        self.mode = mode
        do { backend = try FileSystemBackend(sharedDirectory: share) } catch { throw .setup("\(error)") }
        do {
            vm = try TinyVM(.init(cpus: 1))
            device = try VirtioFsDevice.attach(to: vm, socketPath: backend.socketPath, tag: "bench", delivery: mode)
            try vm.load(GuestProgram.virtioFs.image)
        } catch {
            backend.stop()
            throw .setup("virtio-fs guest (\(mode)): \(error)")
        }
        let m = vm.memory
        m.load(Array(benchFileName.utf8) + [0], at: L.readName)
        m.load(Array("bench-written-\(mode.rawValue)".utf8) + [0], at: L.createName)
        m.write32(UInt32(readSize), at: L.readSize)
        m.write32(16, at: L.writeSize)
        m.write32(UInt32.max, at: L.rounds)
        m.write32(1, at: L.bench)
        vm.start()
        // INIT, LOOKUP, OPEN, READ, CREATE, WRITE, RELEASE: then it waits at the gate.
        guard vm.waitUntil(timeout: .seconds(60), { m.read32(at: L.requests) == 7 }) else {
            let why = vm.hasEnded ? "\(vm.wait())" : "timed out"
            close()
            throw .setup(
                "the virtio-fs guest (\(mode)) did not get through its setup: \(why); step \(m.read32(at: L.step))")
        }
    }

    /// `count` READs, one in flight: their TSC ticks, notify -> reply seen.
    func round(count: Int) throws(BenchError) -> [UInt32] {
        precondition(count <= L.maxSamples)
        let m = vm.memory
        let first = Int(m.read32(at: L.samplesTaken))
        target &+= UInt32(count)
        m.write32(target, at: L.gate)
        // The guest sleeps at the gate (a spinning vCPU would take a core from
        // the backend); any interrupt wakes it, and it then checks the gate.
        _ = bench_floor_signal_msi(vm.vm.rawDescriptor, 0xFEE0_0000, Self.wakeVector)
        guard vm.waitUntil(timeout: .seconds(60), { m.read32(at: L.roundsDone) == target }) else {
            let why = vm.hasEnded ? "guest ended: \(vm.wait())" : "timed out"
            throw .setup(
                "virtio-fs \(mode): round to \(target) did not finish (\(why)); \(m.read32(at: L.roundsDone)) rounds, "
                    + "step \(m.read32(at: L.step)), error \(m.read32(at: L.error)); \(device.counters)")
        }
        return (first..<(first + count)).map { m.read32(at: L.sample($0)) }
    }

    /// Stops the guest, resets the device, closes the connection (virtiofsd then exits) and reaps virtiofsd.
    func close() {
        guard !closed else { return }
        closed = true
        tearDownGuestRig(vm: vm, device: device) { backend.stop() }
    }

    deinit { close() }
}

/// The floor: a virtiofsd driven from the host with no guest and no VMM:
/// FUSE requests on request queue 1 of a ``HostVirtqueueDriver`` in a memfd,
/// the kick eventfd written and the call eventfd waited on with poll(2).
final class FuseFloor {
    let backend: FileSystemBackend
    let frontend: VhostUserFrontend
    let memory: MemfdGuestMemory
    let hiprio: HostVirtqueueDriver
    let queue: HostVirtqueueDriver
    private var unique: UInt64 = 0
    private var node: UInt64 = 0
    private var handle: UInt64 = 0
    private static let request: UInt64 = 0x8_0000
    private static let reply: UInt64 = 0x9_0000
    private static let replyRoom: UInt32 = 0x2000

    init(share: String) throws(BenchError) {
        do { backend = try FileSystemBackend(sharedDirectory: share) } catch { throw .setup("\(error)") }
        do throws(VhostUserError) {
            (frontend, memory) = try connectFloor(
                socketPath: backend.socketPath,
                protocolFeatures: VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.multiQueue)
            hiprio = try HostVirtqueueDriver(memory: memory, queue: 0, size: 16, base: 0, maxData: 16)
            queue = try HostVirtqueueDriver(memory: memory, queue: 1, size: 16, base: 0x1_0000, maxData: 16)
            try hiprio.start(frontend)
            try queue.start(frontend)
        } catch {
            backend.stop()
            throw .setup("the floor's connection to virtiofsd: \(error)")
        }
        // libvhost-user signals each call fd once at SET_VRING_CALL: let it land, then drop it.
        usleep(20_000)
        _ = queue.call.consume()
        let fuse = { (opcode: UInt32, node: UInt64, arguments: [UInt8]) throws(BenchError) -> [UInt8] in
            try self.call(opcode, node: node, arguments).payload
        }
        _ = try fuse(26, 0, Self.bytes(UInt32(7), 31, 0, 0))  // FUSE_INIT 7.31
        let entry = try fuse(1, 1, Array(benchFileName.utf8) + [0])  // FUSE_LOOKUP in the root
        node = Self.u64(entry, 0)
        let opened = try fuse(14, node, Self.bytes(UInt32(0), 0))  // FUSE_OPEN read-only
        handle = Self.u64(opened, 0)
    }

    private static func bytes<T: FixedWidthInteger>(_ values: T...) -> [UInt8] {
        values.flatMap { v in withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    }
    private static func u64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        guard bytes.count >= at + 8 else { return 0 }
        return (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
    }

    /// One FUSE request (one readable and one writable descriptor), kicked and
    /// waited for: its reply and the nanoseconds from the kick to the call's wake-up.
    private func call(_ opcode: UInt32, node: UInt64, _ arguments: [UInt8]) throws(BenchError) -> (
        payload: [UInt8], ns: UInt64
    ) {
        unique += 1
        let header = Self.bytes(UInt32(40 + arguments.count), opcode) + Self.bytes(unique, node, 0, 0)
        memory.write(header + arguments, at: Self.request)
        memory.write([UInt8](repeating: 0, count: 16), at: Self.reply)
        let table = queue.descriptorTable
        memory.store(Self.request, at: table)
        memory.store(UInt32(header.count + arguments.count), at: table + 8)
        memory.store(UInt16(1), at: table + 12)  // NEXT
        memory.store(UInt16(1), at: table + 14)
        memory.store(Self.reply, at: table + 16)
        memory.store(Self.replyRoom, at: table + 24)
        memory.store(UInt16(2), at: table + 28)  // WRITE
        memory.store(UInt16(0), at: table + 30)
        queue.publish(0)
        let start = bench_floor_now_ns()
        queue.kick.signal()
        let signalled = queue.call.wait(timeout: .seconds(2))
        let end = bench_floor_now_ns()
        guard signalled > 0, queue.collect(1, timeout: .seconds(2)).count == 1 else {
            throw .setup("the floor's FUSE request \(opcode) on virtiofsd did not complete")
        }
        let length = memory.load(UInt32.self, at: Self.reply)
        let error = Int32(bitPattern: memory.load(UInt32.self, at: Self.reply + 4))
        guard error == 0, length >= 16, length <= Self.replyRoom else {
            throw .setup("the floor's FUSE request \(opcode) on virtiofsd failed: error \(error), length \(length)")
        }
        return (memory.read(Int(length) - 16, at: Self.reply + 16), end - start)
    }

    /// One READ of 4 KiB: nanoseconds from the kick to the call's wake-up.
    func read() throws(BenchError) -> UInt64 {
        let arguments =
            Self.bytes(handle, 0) + Self.bytes(UInt32(readSize), 0) + Self.bytes(UInt64(0)) + Self.bytes(UInt32(0), 0)
        let (payload, ns) = try call(15, node: node, arguments)
        guard payload.count == readSize else {
            throw .setup("the floor's READ returned \(payload.count) bytes, not \(readSize)")
        }
        return ns
    }

    func close() {
        frontend.close()
        backend.stop()
    }

    deinit { close() }
}

/// The virtio-fs part of the vhost-user section: a FUSE READ of 4 KiB per
/// delivery mode (guest RDTSC, notify -> reply seen) against the floor
/// (``FuseFloor``), in interleaved rounds whose order rotates, so every ratio
/// is paired by round.
struct VirtioFsBench {
    let options: BenchOptions
    let progress: (String) -> Void
    static let modes: [InterruptDelivery] = [.irqfd, .relay, .userspace]

    /// Measures; `tscKHz` converts the guests' stamps.
    func run(tscKHz: Double) throws(BenchError) -> BenchReport.VirtioFs {
        // A directory of its own: two runs in one process (tests) must not share the written files.
        let share = NSTemporaryDirectory() + "irqfd-bench-fs-\(getpid())-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: share, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: share) }
        let data = Data((0..<readSize).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        guard FileManager.default.createFile(atPath: share + "/" + benchFileName, contents: data) else {
            throw .setup("cannot create \(share)/\(benchFileName)")
        }
        progress("vhost-user virtio-fs: starting virtiofsd x \(Self.modes.count + 1) and the guests")
        let floor = try FuseFloor(share: share)
        var guests: [BenchFileSystem] = []
        defer {
            for guest in guests { guest.close() }
            floor.close()
        }
        for mode in Self.modes { guests.append(try BenchFileSystem(mode: mode, share: share)) }
        let toNs = { (ticks: UInt32) in UInt64(Double(ticks) * 1e6 / tscKHz) }

        let rounds = options.vhostRounds
        let perRound = options.vhostLatencyPerRound
        for guest in guests { _ = try guest.round(count: 10) }
        for _ in 0..<10 { _ = try floor.read() }
        var latencies = [RoundLatencies](repeating: .init(), count: guests.count)
        var floorLatency = RoundLatencies()
        // The modes, then the floor.
        try interleave(rounds: rounds, sides: guests.count + 1) { r in
            progress("vhost-user virtio-fs: round \(r + 1)/\(rounds), \(perRound) READs per side")
        } _: { item throws(BenchError) in
            if item == guests.count {
                var samples: [UInt64] = []
                for _ in 0..<perRound { samples.append(try floor.read()) }
                floorLatency.add(round: samples)
            } else {
                latencies[item].add(round: try guests[item].round(count: perRound).map(toNs))
            }
        }
        var ratios: [BenchReport.NamedRatio] = []
        for (i, mode) in Self.modes.enumerated() {
            ratios.append("\(mode.rawValue)_p50_over_floor", .init(path: latencies[i].p50, floor: floorLatency.p50))
            ratios.append("\(mode.rawValue)_p99_over_floor", .init(path: latencies[i].p99, floor: floorLatency.p99))
        }
        if let irqfd = Self.modes.firstIndex(of: .irqfd), let userspace = Self.modes.firstIndex(of: .userspace) {
            let ratio = BenchReport.PairedRatio(path: latencies[irqfd].p50, floor: latencies[userspace].p50)
            ratios.append("irqfd_over_userspace_p50", ratio)
        }
        return .init(
            latency: Self.modes.enumerated().map { i, mode in
                .init(mode: mode.rawValue, latency: LatencySummary(nanoseconds: latencies[i].all), failed: 0)
            },
            floor: LatencySummary(nanoseconds: floorLatency.all), ratios: ratios, rounds: rounds, perRound: perRound)
    }
}
#endif
