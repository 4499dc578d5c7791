#if os(Linux)
import Foundation
import IrqFdLinux
import PCI
import TestSupport
import Testing
import TinyVM
import Virtio

/// The virtio-blk stress guest (64 reads in flight, every completion taken in
/// the queue's interrupt handler) handed from VMM process to VMM process with
/// its vhost-user device: the backend keeps its one connection and hears no
/// message, and every request completes once with its sector's data.
@Suite(needsKVM, .serialized) struct LiveUpdateVirtioProcessTests {
    typealias L = VirtioBlkStressLayout
    static let handOffs = Int(ProcessInfo.processInfo.environment["IRQFD_LIVE_UPDATE_HANDOFFS"] ?? "") ?? 20

    static func queuesAndMessages(_ line: String) -> (queues: Int, messages: Int)? {
        guard
            let match = line.wholeMatch(
                of: #/live update: paused \d+ µs; \d+ routes, (\d+) queues, (\d+) vhost-user messages/#)
        else { return nil }
        return (Int(match.1) ?? -1, Int(match.2) ?? -1)
    }

    /// The backends present here: the embedded one, and qemu-storage-daemon when installed.
    static let kinds = DiskBackendKind.allCases.filter {
        $0 != .qemuStorageDaemon || DiskBackendKind.qemuStorageDaemonPath != nil
    }

    /// Says, when qemu-storage-daemon is missing, that its cases were not generated.
    @Test(
        .enabled(
            if: DiskBackendKind.qemuStorageDaemonPath != nil,
            "skipped: qemu-storage-daemon is not installed (apt-get install --no-install-recommends qemu-system-common)"
        ))
    func theChainsAlsoRunAgainstQemuStorageDaemon() {
        #expect(Self.kinds.contains(.qemuStorageDaemon))
    }

    @Test(arguments: kinds, InterruptDelivery.allCases)
    func aVirtioBlkGuestRunsOnAcrossProcessesWithNoMessageToItsBackend(
        kind: DiskBackendKind, delivery: InterruptDelivery
    ) throws {
        let sectors = 2048
        // 1,000 requests per hand-off: CI's 100 hand-offs make 100,000.
        let total = 1_000 * Self.handOffs
        let image = try TestImage(sectors: sectors) { i in
            withUnsafeBytes(of: L.imageWord(sector: i / 512, dword: (i % 512) / 4).littleEndian) { $0[i % 4] }
        }
        let backend = try BlockBackend(kind: kind, image: image.path)
        defer { backend.stop() }
        let vm = try TinyVM(.init(cpus: 2))
        let device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath, delivery: delivery)
        try vm.startVirtioBlkStress(total: total, inFlight: 64, sectors: sectors)
        let memory = vm.memory
        func word(_ address: UInt64) -> Int { Int(memory.read32(at: address)) }
        #expect(vm.waitUntil(timeout: .seconds(60)) { memory.read32(at: L.phase) >= 1 }, "the guest runs")
        let runs = try RunGenerations(name: "irqfd-lu-blk-\(getpid())-\(kind)-\(delivery)")
        let log = LogLines()
        let source = try LiveUpdateSource(
            vm: vm, listeningAt: runs.socket(0), devices: [LiveUpdateVirtioDevice(device, name: "virtio-blk")]
        ) { log.append($0) }
        source.start()
        defer {
            runs.killRunning()
            source.stop()
            vm.stop()
            _ = vm.wait()
            runs.removeFiles()
        }
        for handOff in 1...Self.handOffs {
            // Requests in flight at every hand-off.
            let target = handOff * total / (Self.handOffs + 2)
            let progress = ContinuousClock.now + .seconds(60)
            while word(L.completed) < target, ContinuousClock.now < progress { usleep(1_000) }
            let line = try runs.handOff(from: source, sourceLog: log)
            let parsed = Self.queuesAndMessages(line)
            #expect(parsed?.queues == 1 && parsed?.messages == 0, "hand-off \(handOff): \(line)")
            if parsed == nil { break }
        }
        let done = ContinuousClock.now + .seconds(120)
        while word(L.phase) != 2, ContinuousClock.now < done { usleep(1_000) }
        print(
            "live update (virtio-blk on \(kind), \(delivery)): \(Self.handOffs) hand-offs across processes, "
                + "\(word(L.completed)) of \(total) requests completed, \(word(L.duplicates)) twice")
        #expect(word(L.completed) == total && word(L.submitted) == total, "completed \(word(L.completed))")
        #expect(word(L.badIDs) == 0 && word(L.duplicates) == 0, "each request once")
        #expect(word(L.badStatus) == 0 && word(L.badData) == 0, "the right data, VIRTIO_BLK_S_OK")
        #expect(backend.isRunning, "the backend never went away")
        #expect(acceptedUnixConnections(listeningAt: backend.socketPath) == 1, "one connection from first to last")
    }

    /// The backend `irqfd run --disk` started moves with the guest: the old
    /// process exits 0 leaving it running, the successor serves the disk
    /// over the same connection, and the last process stops the backend at
    /// the end of its run.
    @Test(arguments: kinds)
    func theBackendThatDiskStartedBelongsToTheSuccessor(kind: DiskBackendKind) throws {
        // Its logs are files, not pipes: the backend, a child of the first process, outlives it.
        let runs = try RunGenerations(name: "irqfd-lu-disk-\(getpid())-\(kind)")
        let program = "/tmp/\(runs.name).bin"
        let disk = try TestImage(sectors: 64)
        try Data(GuestProgram.interruptCounter.image).write(to: URL(fileURLWithPath: program))
        defer { try? FileManager.default.removeItem(atPath: program) }
        let errors = runs.log
        /// The backend serving `disk`: a process whose command line names the
        /// image, and that is not an `irqfd run`.
        func backendPID() -> Int32? {
            let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            for pid in pids.compactMap(Int32.init) {
                guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { continue }
                let words = String(decoding: data, as: UTF8.self).split(separator: "\0")
                if words.contains(where: { $0.contains(disk.path) }), !words.contains("run") { return pid }
            }
            return nil
        }
        let first = try runs.start(
            0,
            [
                program, "--disk", disk.path, "--disk-backend", kind.rawValue, "--update-socket", runs.socket(0),
                "--timeout", "60",
            ])
        defer {
            runs.killRunning()
            runs.removeFiles()
            if let pid = backendPID() { kill(pid, SIGKILL) }
        }
        while !FileManager.default.fileExists(atPath: runs.socket(0)), first.isRunning { usleep(1_000) }
        let backend = try #require(backendPID(), "the backend runs: \(errors(0))")
        let second = try runs.start(
            1, ["--incoming", runs.socket(0), "--update-socket", runs.socket(1), "--timeout", "60"])
        #expect(try RunGenerations.exitStatus(first) == 0, "\(errors(0))")
        #expect(kill(backend, 0) == 0, "the backend outlives the first VMM")
        while !FileManager.default.fileExists(atPath: runs.socket(1)), second.isRunning { usleep(1_000) }
        let third = try runs.start(2, ["--incoming", runs.socket(1), "--timeout", "1"])
        #expect(try RunGenerations.exitStatus(second) == 0, "\(errors(1))")
        #expect(try RunGenerations.exitStatus(third) == 124, "\(errors(2))")
        for generation in 1...2 {
            let line = runs.firstLine(generation)
            let parsed = Self.queuesAndMessages(line)
            #expect(parsed?.queues == 1 && parsed?.messages == 0, "\(generation): \(errors(generation))")
        }
        #expect(backendPID() == nil, "the last VMM stopped the backend")
    }
}
#endif
