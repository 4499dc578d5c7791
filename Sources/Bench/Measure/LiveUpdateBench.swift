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
/// one moved by the library (TinyVM's `handOff(to:routes:)`) and one by the C
/// floor (`bench_floor_live_update`), each to a VM made beforehand over its
/// RAM, once per round, the order alternating from round to round. A device
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

    func run() throws(BenchError) -> BenchReport.LiveUpdate {
        let rounds = options.quick ? 20 : 100
        progress("live update: starting the guests")
        let message = MsiMessage(destination: 0, vector: Self.vector)

        // The library's guest, on TinyVM's own vCPU threads and routes.
        let library = try startInterruptCountingGuest()
        let route: KVMIrqFdRoute
        do {
            route = try library.irqfd.newRoute()
            try route.setMsi(message)
        } catch { throw .library("live update: the route", error) }
        var libraryVM = library
        var routes = [route]

        // The floor's guest: a TinyVM that is never started; a C thread runs its vCPU.
        var floorVM: TinyVM
        do {
            floorVM = try TinyVM(.init(cpus: 1, coalescesCommits: false))
            try floorVM.load(GuestProgram.interruptCounter.image)
        } catch { throw .setup("TinyVM: \(error)") }
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
            throw .setup("the floor's guest did not come up")
        }

        let libraryDevice = Device(memory: library.memory, fd: route.event.nativeHandleDescriptor)
        let floorDevice = Device(memory: floorVM.memory, fd: efd)
        libraryDevice.start()
        floorDevice.start()

        var pauses: [UInt64] = []
        var handOffs: [UInt64] = []
        var floorPauses: [UInt64] = []
        var floorHandOffs: [UInt64] = []
        var failure: BenchError?
        for round in 0..<rounds {
            if round % 10 == 0 { progress("live update: round \(round + 1)/\(rounds)") }
            usleep(2_000)  // the devices get some signals through between moves
            do throws(BenchError) {
                let nextLibrary = try Self.successor(of: libraryVM)
                let nextFloor = try Self.successor(of: floorVM)
                func moveLibrary() throws(BenchError) {
                    do {
                        let moved = try libraryVM.handOff(to: nextLibrary, routes: routes)
                        _ = libraryVM.wait()
                        routes = moved.routes
                        libraryVM = nextLibrary
                        pauses.append(moved.pauseNanoseconds)
                        handOffs.append(moved.totalNanoseconds)
                    } catch { throw .setup("the library's hand-off: \(error)") }
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
                if round % 2 == 0 {
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
        libraryVM.stop()
        libraryVM.wait()
        if let failure { throw failure }

        let pause = LatencySummary(nanoseconds: pauses)
        let floorPause = LatencySummary(nanoseconds: floorPauses)
        let ratio = BenchReport.PairedRatio(path: pauses.map(Double.init), floor: floorPauses.map(Double.init))
        let signals = libraryDevice.sent.load(ordering: .relaxed) + floorDevice.sent.load(ordering: .relaxed)
        let lost = libraryDevice.lost.load(ordering: .relaxed) + floorDevice.lost.load(ordering: .relaxed)
        let targets = [
            BenchReport.TargetCheck(
                name: "live update: pause p50 / C floor (paired)", paired: ratio, limit: 2,
                note: "the guest's pause against a C floor doing only the KVM part, VMs made beforehand"),
            BenchReport.TargetCheck(
                name: "live update: pause p99 / 5 ms", ratio: pause.p99Us / 5000, limit: 1,
                note: "the guest's pause at p99 under 5 ms"),
            BenchReport.TargetCheck(
                name: "live update: interrupts lost", ratio: Double(lost), limit: 0,
                note: "device signals whose interrupt never reached the guest's handler"),
        ]
        return BenchReport.LiveUpdate(
            rounds: pauses.count, routes: 1, pause: pause, handOff: LatencySummary(nanoseconds: handOffs),
            floorPause: floorPause, floorHandOff: LatencySummary(nanoseconds: floorHandOffs), pauseRatio: ratio,
            signals: signals, lost: lost, targets: targets)
    }
}

extension Event {
    /// The event's descriptor number, borrowed (the bench's C device writes it).
    fileprivate var nativeHandleDescriptor: Int32 { Int32(nativeHandle.rawValue) }
}
#endif
