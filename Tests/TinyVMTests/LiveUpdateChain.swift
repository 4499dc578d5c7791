#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import PCI
import Synchronization
import TestSupport
import Testing
import TinyVM

/// The device-driver guest (`GuestProgram.msixDriver`) driven from outside
/// the process that runs it: the test keeps a mapping of guest RAM (the memfd
/// every VMM in the chain maps), writes commands into the guest's mailbox and
/// wakes vCPU 0 through a route of the VMM's own whose event the test holds.
/// The route moves with every hand-off, so the test can drive the guest in
/// whichever process runs it.
final class RemoteDriver: Sendable {
    let memory: GuestMemory
    let wake: any Event
    private let serial = Mutex<Void>(())

    init(memory: GuestMemory, wake: any Event) {
        self.memory = memory
        self.wake = wake
    }

    /// Runs one mailbox command (see msix_driver.S) and returns its result.
    @discardableResult
    func run(_ op: DeviceDriverGuest.Op, _ args: [UInt32] = [], waiting: Bool = true) throws -> UInt32 {
        try serial.withLock { _ in
            typealias M = DeviceDriverGuest.Mailbox
            for (i, a) in args.enumerated() { memory.write32(a, at: M.arguments + 4 * UInt64(i)) }
            memory.write32(op.rawValue, at: M.op)
            let seq = memory.read32(at: M.seq) &+ 1
            memory.write32(seq, at: M.seq)
            wake.signal()
            guard waiting else { return 0 }
            let deadline = ContinuousClock.now + .seconds(20)
            while memory.read32(at: M.done) != seq {
                guard ContinuousClock.now < deadline else { throw TestFailure("the guest did not finish \(op)") }
                usleep(100)
            }
            return memory.read32(at: M.result)
        }
    }

    func readPBA() throws -> UInt32 {
        try run(.mmioRead, [UInt32(MsixTestDevice.msixBase + UInt64(MsixTestDevice.pbaOffset))])
    }

    func setMasked(_ v: Int, _ masked: Bool) throws {
        try run(.mmioWrite, [UInt32(MsixTestDevice.msixBase) + 16 * UInt32(v) + 12, masked ? 1 : 0])
    }

    func ring(_ v: Int) throws {
        try run(
            .mmioWrite,
            [UInt32(MsixTestDevice.registersBase + MsixTestDevice.Register.doorbell.rawValue), UInt32(v)])
    }

    /// The guest writes `status` to the exit port (no answer comes: the run ends).
    func exit(_ status: UInt8) throws { try run(.exit, [UInt32(status)], waiting: false) }

    func count(_ vector: UInt8) -> UInt32 {
        memory.read32(at: InterruptCounterLayout.count(cpu: 0, vector: vector))
    }

    func waitForCount(_ vector: UInt8, atLeast: UInt32, timeout: Duration = .seconds(10)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while count(vector) < atLeast {
            if ContinuousClock.now > deadline { return false }
            usleep(50)
        }
        return true
    }
}

/// A guest on the PCI test device, first run by a VMM in this process (the
/// first of a chain), then handed to `irqfd run --incoming` processes one
/// after another. A device signals vector 0 throughout (each signal waits
/// for the guest's handler, as a device waiting for its completion would);
/// vector 1 is masked with its pending bit set.
final class LiveUpdateChain {
    static let liveVector: UInt8 = 0x45
    static let maskedVector: UInt8 = 0x46
    /// Vectors of the test device, each given a route (and so an event that
    /// crosses): more than one frame of descriptors.
    static let vectors = 40

    let delivery: InterruptDelivery
    let first: TinyVM
    let device: MsixTestDevice
    let source: LiveUpdateSource
    let wakeRoute: KVMIrqFdRoute
    let remote: RemoteDriver
    /// What the first VMM's live-update side logged.
    let sourceLog = LogLines()
    /// The `irqfd run --incoming` processes (generations 1, 2, ...); the last runs the guest.
    let runs: RunGenerations
    var processes: [Process] { runs.processes }
    private var helper: EventHolderProcess?
    private var maskedEvent: (any Event)?

    /// What the signalling device did, shared with its thread.
    final class Signalling: Sendable {
        let sent = Atomic<Int>(0)
        let lost = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)
        let done = Atomic<Bool>(true)
    }
    let signalling = Signalling()
    var sent: Int { signalling.sent.load(ordering: .acquiring) }
    var lost: Int { signalling.lost.load(ordering: .acquiring) }

    init(delivery: InterruptDelivery, name: String) throws {
        self.delivery = delivery
        runs = try RunGenerations(name: "irqfd-lu-\(getpid())-\(name)-\(delivery)")
        first = try TinyVM(.init(cpus: 1))
        device = try MsixTestDevice.attach(to: first, vectors: Self.vectors, delivery: delivery)
        let driver = try DeviceDriverGuest(vm: first)
        try driver.start()
        try driver.setMsix(enabled: true)
        try driver.program(0, MsiMessage(destination: 0, vector: Self.liveVector), masked: false)
        try driver.program(1, MsiMessage(destination: 0, vector: Self.maskedVector), masked: true)
        wakeRoute = try first.irqfd.newRoute()
        try wakeRoute.setMsi(MsiMessage(destination: 0, vector: DeviceDriverGuest.wakeVector))
        remote = RemoteDriver(memory: first.memory, wake: wakeRoute.event)
        // Vector 1 is masked: its signal latches and shows in the PBA.
        if delivery == .userspace {
            try driver.ring(1)
            device.waitUntilIdle()
        } else {
            let event = try device.emulator.event(for: 1)
            event.signal()
            maskedEvent = event
        }
        #expect(try driver.readPBA() == 0b10, "vector 1 pending")
        if delivery != .userspace {
            for v in 2..<Self.vectors { _ = try device.emulator.event(for: v) }
        }
        let log = sourceLog
        source = try LiveUpdateSource(
            vm: first, listeningAt: runs.socket(0), devices: [device], routes: [wakeRoute]
        ) { line in log.append(line) }
        source.start()
    }

    func socket(_ generation: Int) -> String { runs.socket(generation) }
    func log(_ generation: Int) -> String { runs.log(generation) }

    /// Starts the device signalling vector 0: the out-of-process helper
    /// holding vector 0's event, or (userspace delivery has no event to hold)
    /// the guest ringing the doorbell.
    func startSignalling() throws {
        let signal: @Sendable () throws -> Void
        if delivery == .userspace {
            let remote = remote
            signal = { try remote.ring(0) }
        } else {
            let event = try #require(try device.emulator.event(for: 0) as? EventFD)
            let helper = try EventHolderProcess(holding: event, socketName: runs.name)
            self.helper = helper
            let box = UncheckedBox(helper)
            signal = { try box.value.signal() }
        }
        signalling.done.store(false, ordering: .releasing)
        let (state, remote) = (signalling, remote)
        let thread = Thread {
            defer { state.done.store(true, ordering: .releasing) }
            while !state.stop.load(ordering: .acquiring) {
                let n = state.sent.add(1, ordering: .relaxed).newValue
                do { try signal() } catch {
                    state.lost.add(1, ordering: .relaxed)
                    return
                }
                if !remote.waitForCount(Self.liveVector, atLeast: UInt32(n), timeout: .seconds(20)) {
                    state.lost.add(1, ordering: .relaxed)
                    return
                }
            }
        }
        thread.start()
    }

    func stopSignalling() {
        signalling.stop.store(true, ordering: .releasing)
        while !signalling.done.load(ordering: .acquiring) { usleep(1_000) }
    }

    /// Hands the guest from generation `processes.count` to a new process;
    /// returns the line the new one printed.
    @discardableResult
    func handOff(sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let line = try runs.handOff(from: source, sourceLog: sourceLog, sourceLocation: sourceLocation)
        if processes.count == 1 { #expect(first.wait() == .stopped, sourceLocation: sourceLocation) }
        return line
    }

    /// Descriptors open in process `pid` (/proc/PID/fd).
    static func openDescriptors(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// Stops the signalling device and everything the chain started.
    func finish() {
        stopSignalling()
        try? helper?.quit()
        helper = nil
        runs.killRunning()
        source.stop()
        first.stop()
        _ = first.wait()
        runs.removeFiles()
    }
}

/// A value a thread may use although its type is not `Sendable`.
final class UncheckedBox<Value>: @unchecked Sendable {
    // @unchecked: the tests hand the value to exactly one other thread and stop
    // using it themselves until that thread has finished.
    let value: Value
    init(_ value: Value) { self.value = value }
}
#endif
