#if os(Linux)
import CBenchFloor
import CLinuxKVM
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import Synchronization
import TinyVM

/// Measures `irqfd bench --only live-update`: two interrupt-counting guests,
/// one moved by the library between processes (this one and `irqfd run
/// --incoming` successors, each making its VM before the pause) and one by
/// the C floor (`bench_floor_live_update`) to a VM made beforehand over its
/// RAM in this process, once per round each, the order alternating. A device
/// thread per guest signals the guest's route throughout, each signal
/// waiting (polling, not spinning: 2 cores) for the guest's handler, so a
/// signal sent in a pause latches and is counted only when the new VM takes it.
final class LiveUpdateBench {
    let options: BenchOptions
    let progress: (String) -> Void
    static let vector: UInt8 = 0x48
    /// A GSI above KVM's irqchip routes for the floor's one route.
    static let floorGsi: UInt32 = 64

    init(options: BenchOptions, progress: @escaping (String) -> Void) {
        self.options = options
        self.progress = progress
    }

    /// Signals `event` (an eventfd) until told to stop, each time waiting for
    /// the guest's count of `vector` to rise; counts sends and losses.
    final class Device: @unchecked Sendable {
        // @unchecked: `memory` is read only through its atomic accessors and
        // outlives the thread (the bench holds it); the rest is atomics.
        let sent = Atomic<Int>(0)
        let lost = Atomic<Int>(0)
        let stopRequested = Atomic<Bool>(false)
        /// True while no thread runs: before `start()` and once it ended.
        let stopped = Atomic<Bool>(true)
        let memory: GuestMemory
        let fd: Int32

        init(memory: GuestMemory, fd: Int32) {
            self.memory = memory
            self.fd = fd
        }

        func start() {
            let counter = InterruptCounterLayout.count(cpu: 0, vector: LiveUpdateBench.vector)
            stopped.store(false, ordering: .releasing)
            Thread { [self] in
                defer { stopped.store(true, ordering: .releasing) }
                while !stopRequested.load(ordering: .acquiring) {
                    let i = sent.add(1, ordering: .relaxed).newValue
                    bench_floor_signal(fd)
                    let deadline = bench_floor_now_ns() + 10_000_000_000
                    while memory.read32(at: counter) < UInt32(truncatingIfNeeded: i) {
                        if bench_floor_now_ns() > deadline {
                            lost.add(1, ordering: .relaxed)
                            return
                        }
                        usleep(50)
                    }
                }
            }.start()
        }

        func stop() {
            stopRequested.store(true, ordering: .releasing)
            while !stopped.load(ordering: .acquiring) { usleep(100) }
        }
    }

    static func successor(of vm: TinyVM) throws(BenchError) -> TinyVM {
        do {
            let ram = try GuestMemory(
                mapping: try vm.memory.fileDescriptor.duplicateCloseOnExec(), size: vm.configuration.memorySize)
            return try TinyVM(vm.configuration, incoming: ram)
        } catch { throw .setup("the successor VM: \(error)") }
    }

    /// The `irqfd` executable a successor runs: this process's own when it
    /// is `irqfd`, else one built next to it or in a directory above it
    /// (a test bundle's), or nil.
    static func irqfdExecutable() -> String? {
        guard let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
        var directory = URL(fileURLWithPath: me)
        if directory.lastPathComponent == "irqfd" { return me }
        directory.deleteLastPathComponent()
        while !directory.path.isEmpty, directory.path != "/" {
            let candidate = directory.appendingPathComponent("irqfd").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory.deleteLastPathComponent()
        }
        return nil
    }

    /// The library's side: the guest goes back and forth between this
    /// process and `irqfd run --incoming` processes, one fresh process per
    /// round trip: hand-off 2k goes from here to a new process (which made
    /// its VM first), hand-off 2k + 1 comes back (this process makes its VM
    /// first). Each is a real cross-process hand-off over a Unix socket.
    final class Library {
        let executable: String
        let base: String
        var vm: TinyVM
        var routes: [KVMIrqFdRoute]
        var source: LiveUpdateSource?
        var generation = 0
        var successor: Process?
        let progress: (String) -> Void

        init(executable: String, vm: TinyVM, routes: [KVMIrqFdRoute], progress: @escaping (String) -> Void) {
            self.executable = executable
            self.vm = vm
            self.routes = routes
            self.progress = progress
            base = NSTemporaryDirectory() + "irqfd-bench-lu-\(getpid())"
        }

        func socket(_ generation: Int) -> String { "\(base)-\(generation).sock" }
        var errors: String { "\(base).err" }
        private var errorText: String { (try? String(contentsOfFile: errors, encoding: .utf8)) ?? "" }

        func listen() throws(BenchError) {
            do {
                let source = try LiveUpdateSource(
                    vm: vm, listeningAt: socket(generation), devices: [], routes: routes
                ) { line in FileHandle.standardError.write(Data("irqfd bench: \(line)\n".utf8)) }
                source.start()
                self.source = source
            } catch { throw .setup("listening for a successor: \(error)") }
        }

        /// Hands the guest to a new `irqfd run --incoming` process; its timeline.
        func handOut() throws(BenchError) -> LiveUpdateTimeline {
            guard let source else { throw .setup("no live-update source") }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = [
                "run", "--incoming", socket(generation), "--update-socket", socket(generation + 1), "--timeout",
                "120",
            ]
            _ = FileManager.default.createFile(atPath: errors, contents: nil)
            do {
                process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errors))
                process.standardOutput = FileHandle.nullDevice
                process.standardInput = FileHandle.nullDevice
                try process.run()
            } catch { throw .setup("starting irqfd run --incoming: \(error)") }
            successor = process
            let deadline = ContinuousClock.now + .seconds(60)
            while source.completed == nil, process.isRunning, ContinuousClock.now < deadline { usleep(200) }
            guard source.waitUntilSettled() == .takenOver, let timeline = source.handOffTimeline else {
                throw .setup("the hand-off to pid \(process.processIdentifier) failed: \(errorText)")
            }
            _ = vm.wait()
            try? FileManager.default.removeItem(atPath: socket(generation))
            self.source = nil
            generation += 1
            return timeline
        }

        /// Takes the guest back from the process that has it; its timeline.
        func takeBack() throws(BenchError) -> LiveUpdateTimeline {
            guard let process = successor else { throw .setup("no successor to take the guest back from") }
            let path = socket(generation)
            let deadline = ContinuousClock.now + .seconds(60)
            var taken: LiveUpdateIncoming?
            while taken == nil {
                // The successor listens once it has taken over: until then the socket is not there.
                guard process.isRunning, ContinuousClock.now < deadline else {
                    throw .setup("pid \(process.processIdentifier) did not listen: \(errorText)")
                }
                guard FileManager.default.fileExists(atPath: path) else {
                    usleep(200)
                    continue
                }
                do { taken = try LiveUpdateIncoming.takeOver(from: path, kinds: []) } catch {
                    guard case .transport(step: "connect", _) = error else {
                        throw .setup("taking the guest back: \(error); pid \(process.processIdentifier): \(errorText)")
                    }
                    usleep(200)
                }
            }
            guard let taken else { throw .setup("taking the guest back") }
            vm = taken.vm
            routes = taken.routes
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                throw .setup("pid \(process.processIdentifier) exited \(process.terminationStatus): \(errorText)")
            }
            successor = nil
            try? FileManager.default.removeItem(atPath: path)
            generation += 1
            try listen()
            return taken.timeline
        }

        /// Stops the guest wherever it runs and everything the bench started.
        func finish() {
            if let successor, successor.isRunning {
                kill(successor.processIdentifier, SIGKILL)
                successor.waitUntilExit()
            }
            _ = source?.waitUntilSettled()
            vm.stop()
            _ = vm.wait()
            for g in 0...generation + 1 { try? FileManager.default.removeItem(atPath: socket(g)) }
            try? FileManager.default.removeItem(atPath: errors)
        }
    }

    func run() throws(BenchError) -> BenchReport.LiveUpdate {
        let rounds = options.quick ? 10 : 100
        guard let executable = Self.irqfdExecutable() else {
            throw .setup("live update: no irqfd executable to run the successors")
        }
        progress("live update: starting the guests")
        let message = MsiMessage(destination: 0, vector: Self.vector)

        // The library's guest, on TinyVM's own vCPU threads and routes.
        let library = try startInterruptCountingGuest()
        let route: KVMIrqFdRoute
        do {
            route = try library.irqfd.newRoute()
            try route.setMsi(message)
        } catch { throw .library("live update: the route", error) }
        // The device keeps its own descriptor of the route's event: the event moves from process to process.
        let deviceEvent = dup(route.event.nativeHandle.fileDescriptor.rawValue)
        guard deviceEvent >= 0 else { throw .floor("dup", -errno) }
        defer { close(deviceEvent) }
        let mover = Library(executable: executable, vm: library, routes: [route], progress: progress)
        do throws(BenchError) { try mover.listen() } catch {
            mover.finish()
            throw error
        }

        // The floor's guest: a TinyVM that is never started; a C thread runs its vCPU.
        var floorVM: TinyVM
        do {
            floorVM = try TinyVM(.init(cpus: 1, coalescesCommits: false))
            try floorVM.load(GuestProgram.interruptCounter.image)
        } catch {
            mover.finish()
            throw .setup("TinyVM: \(error)")
        }
        let efd = bench_floor_eventfd()
        guard efd >= 0 else { throw .floor("eventfd", efd) }
        defer { bench_floor_close(efd) }
        var entry = bench_floor_msi(gsi: Self.floorGsi, data: message.data, address: message.address)
        var result = bench_floor_push(floorVM.vm.rawDescriptor, &entry, 1, nil)
        guard result == 0 else { throw .floor("KVM_SET_GSI_ROUTING", result) }
        result = bench_floor_irqfd(floorVM.vm.rawDescriptor, efd, Self.floorGsi, 0)
        guard result == 0 else { throw .floor("KVM_IRQFD", result) }
        var floorGuest: OpaquePointer? = bench_floor_guest_start(floorVM.vcpus[0].rawDescriptor)
        guard floorGuest != nil else { throw .floor("bench_floor_guest_start", -errno) }
        let ready = floorVM.waitUntil(timeout: .seconds(20)) {
            floorVM.memory.read32(at: InterruptCounterLayout.ready(cpu: 0)) == 1
        }
        guard ready else {
            _ = bench_floor_guest_stop(floorGuest)
            mover.finish()
            throw .setup("the floor's guest did not come up")
        }

        let libraryDevice = Device(memory: library.memory, fd: deviceEvent)
        let floorDevice = Device(memory: floorVM.memory, fd: efd)
        libraryDevice.start()
        floorDevice.start()

        var timelines: [LiveUpdateTimeline] = []
        var floorPauses: [UInt64] = []
        var floorHandOffs: [UInt64] = []
        var failure: BenchError?
        for round in 0..<rounds {
            if round % 10 == 0 { progress("live update: hand-off \(round + 1)/\(rounds)") }
            usleep(2_000)  // the devices get some signals through between moves
            do throws(BenchError) {
                let nextFloor = try Self.successor(of: floorVM)
                func moveLibrary() throws(BenchError) {
                    timelines.append(round % 2 == 0 ? try mover.handOut() : try mover.takeBack())
                }
                func moveFloor() throws(BenchError) {
                    var pause: UInt64 = 0
                    var total: UInt64 = 0
                    var fds = [efd]
                    var entries = [entry]
                    let result = bench_floor_live_update(
                        &floorGuest, floorVM.vm.rawDescriptor, nextFloor.vm.rawDescriptor,
                        nextFloor.vcpus[0].rawDescriptor, &fds, &entries, 1, &pause, &total)
                    guard result == 0 else { throw .floor("bench_floor_live_update", result) }
                    floorVM = nextFloor
                    floorPauses.append(pause)
                    floorHandOffs.append(total)
                }
                // Both directions in both orders: rounds 0, 1 library first, 2, 3 floor first, ...
                if round / 2 % 2 == 0 {
                    try moveLibrary()
                    try moveFloor()
                } else {
                    try moveFloor()
                    try moveLibrary()
                }
            } catch {
                failure = error
                break
            }
        }
        libraryDevice.stop()
        floorDevice.stop()
        _ = bench_floor_guest_stop(floorGuest)
        mover.finish()
        if let failure { throw failure }

        let pauses = timelines.map(\.pauseNanoseconds)
        let pause = LatencySummary(nanoseconds: pauses)
        let floorPause = LatencySummary(nanoseconds: floorPauses)
        let ratio = BenchReport.PairedRatio(path: pauses.map(Double.init), floor: floorPauses.map(Double.init))
        let signals = libraryDevice.sent.load(ordering: .relaxed) + floorDevice.sent.load(ordering: .relaxed)
        let lost = libraryDevice.lost.load(ordering: .relaxed) + floorDevice.lost.load(ordering: .relaxed)
        let steps = (timelines.first?.pauseSteps ?? []).indices.map { index in
            BenchReport.LiveUpdate.Step(
                name: timelines[0].pauseSteps[index].step,
                time: LatencySummary(nanoseconds: timelines.map { $0.pauseSteps[index].nanoseconds }))
        }
        let targets = [
            BenchReport.TargetCheck(
                name: "live update: pause p50 / C floor (paired)", paired: ratio, limit: 2,
                note: "the guest's pause across processes against a C floor doing only the KVM part in one process"),
            BenchReport.TargetCheck(
                name: "live update: pause p99 / 5 ms", ratio: pause.p99Us / 5000, limit: 1,
                note: "the guest's pause at p99 under 5 ms"),
            BenchReport.TargetCheck(
                name: "live update: interrupts lost", ratio: Double(lost), limit: 0,
                note: "device signals whose interrupt never reached the guest's handler"),
        ]
        return BenchReport.LiveUpdate(
            rounds: pauses.count, routes: 1, pause: pause,
            handOff: LatencySummary(nanoseconds: timelines.map(\.handOffNanoseconds)),
            floorPause: floorPause, floorHandOff: LatencySummary(nanoseconds: floorHandOffs), pauseRatio: ratio,
            signals: signals, lost: lost, targets: targets, crossProcess: true, pauseSteps: steps)
    }
}
#endif
