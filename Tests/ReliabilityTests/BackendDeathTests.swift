#if os(Linux)
import Foundation
import IrqFdCore
import KVMTestSupport
import Logging
import MSIX
import PCI
import Synchronization
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

// The vhost-user backend dies (SIGKILL, as a crash) during setup, with
// requests in flight, while a vector is masked, and while idle. The device
// notices (at once when idle: its watcher polls the socket for a hang-up),
// sets DEVICE_NEEDS_RESET, sets ISR bit 1 and raises msix_config through the
// MSI-X emulator (virtio 1.2 §2.1.2, §4.1.4.5); a reset reconnects to the
// restarted backend and the re-initialised device serves requests with the
// right data.

/// The backends these tests kill: the embedded one when built, and
/// qemu-storage-daemon when installed (else its cases are not generated and
/// `deathQSDInstalled` says why).
let deathBackends: [VhostUserBackendProcess.Kind] =
    (VhostUserBackendProcess.embeddedPath() != nil ? [.embedded] : [])
    + (VhostUserBackendProcess.qemuStorageDaemonPath() != nil ? [.qemuStorageDaemon] : [])
let deathQSDInstalled = Testing.ConditionTrait.enabled(
    if: VhostUserBackendProcess.qemuStorageDaemonPath() != nil,
    "skipped: qemu-storage-daemon is not installed (apt-get install --no-install-recommends qemu-system-common)")

/// The death tests' image: byte i is `deathPattern(i)`, a pattern with no
/// two equal sectors, so a reply with the wrong sector's data shows.
func deathImage(sectors: Int = 64) throws -> TestImage {
    try TestImage(sectors: sectors) { i in UInt8(truncatingIfNeeded: i / 512 &* 29 &+ i % 253 &+ 3) }
}

/// A backend that can be killed and started again on the same socket path.
final class KillableBackend {
    let kind: VhostUserBackendProcess.Kind
    let image: TestImage
    var socketPath: String { image.directory + "/blk.sock" }
    private(set) var process: VhostUserBackendProcess
    private(set) var starts = 0

    init(_ kind: VhostUserBackendProcess.Kind, image: TestImage) throws {
        self.kind = kind
        self.image = image
        process = try VhostUserBackendProcess.start(kind, image: image.path, socketPath: image.directory + "/blk.sock")
        starts = 1
    }
    deinit { process.stop() }

    /// SIGKILL: the kernel closes its end of every connection.
    func kill() { process.kill() }

    /// A new process on the same socket.
    func restart() throws {
        process.kill()
        process = try VhostUserBackendProcess.start(kind, image: image.path, socketPath: socketPath)
        starts += 1
    }
}

/// Log lines a device wrote, kept for the test that reads them.
final class CapturedLog: Sendable {
    let lines = Mutex<[(Logger.Level, String)]>([])
    var all: [(Logger.Level, String)] { lines.withLock { $0 } }
    var logger: Logger {
        TestLogHandler.logger { [self] event in lines.withLock { $0.append((event.level, event.message.description)) } }
    }
}

/// A log handler that hands every event, at every level, to `body`.
struct TestLogHandler: LogHandler {
    let body: @Sendable (LogEvent) -> Void
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { body(event) }
    /// A logger (label `irqfd.virtio-blk`) whose events go to `body`.
    static func logger(_ body: @escaping @Sendable (LogEvent) -> Void) -> Logger {
        Logger(label: "irqfd.virtio-blk") { _ in TestLogHandler(body: body) }
    }
}

/// The host driver as the backend-death tests bring the device up, step by
/// step, through its MMIO and configuration entry points: MSI-X on with
/// vector 0 for configuration changes (masked, so that its raising shows as
/// PBA bit 0) and vector 1 for queue 0.
typealias DeathDriver = BlkHostDriver

extension BlkHostDriver {
    var isr: UInt64 { device.read(address: VirtioBlkDevice.virtioBase + VirtioBlkDevice.isrOffset, size: 1) }

    /// MSI-X enable, table entries 0 (config, masked) and 1 (queue 0).
    func enableMSIX() {
        let control = VirtioBlkDevice.msixCapabilityOffset + 2
        device.configWrite(offset: control, size: 2, value: UInt32(device.emulator.messageControl | 0x8000))
        for v in 0..<2 {
            let entry = VirtioBlkDevice.msixBase + 16 * UInt64(v)
            device.write(address: entry, size: 4, value: 0xFEE0_0000)
            device.write(address: entry + 4, size: 4, value: 0)
            device.write(address: entry + 8, size: 4, value: 0x40 + UInt64(v))
            device.write(address: entry + 12, size: 4, value: v == 0 ? 1 : 0)
        }
    }

    /// Vector `v`'s mask bit (vector control).
    func mask(_ v: Int, _ masked: Bool) {
        device.write(address: VirtioBlkDevice.msixBase + 16 * UInt64(v) + 12, size: 4, value: masked ? 1 : 0)
    }

    /// The steps of virtio 1.2 section 3.1.1 (VERSION_1 only).
    static let stepCount = 8
    mutating func step(_ k: Int) {
        switch k {
        case 0:
            w(0x14, 1, 0)
            waitForReset()
        case 1: w(0x14, 1, 1)
        case 2: w(0x14, 1, 3)
        case 3:
            w(0x08, 4, 0)
            w(0x0C, 4, 0)
            w(0x08, 4, 1)
            w(0x0C, 4, 1)
        case 4: w(0x14, 1, 0x0B)
        case 5: w(0x10, 2, 0)  // msix_config = vector 0
        case 6:
            w(0x16, 2, 0)
            w(0x18, 2, UInt64(Self.size))
            w(0x1A, 2, 1)  // queue 0 -> vector 1 (a SET_VRING_CALL)
            w(0x20, 8, Self.ring)
            w(0x28, 8, Self.ring + 0x1000)
            w(0x30, 8, Self.ring + 0x2000)
            memory.load([UInt8](repeating: 0, count: 0x3000), at: Self.ring)  // fresh rings
            avail = 0
            w(0x1C, 2, 1)
        default:
            w(0x14, 1, 0x0F)
            // The write returned at once; the worker starts the queue (or fails, with NEEDS_RESET).
            device.waitUntilIdle()
        }
    }

    /// As a driver does after writing 0 (virtio 1.2 section 4.1.4.3.1): reads
    /// device_status until it is 0 (the device's worker has stopped the rings).
    func waitForReset() {
        let deadline = ContinuousClock.now + .seconds(30)
        while r(0x14, 1) != 0, ContinuousClock.now < deadline { usleep(1000) }
    }

    mutating func initialise() -> Bool {
        for k in 0..<Self.stepCount { step(k) }
        return r(0x14, 1) == 0x0F
    }
}

@Suite(needsKVM) struct BackendDeathTests {
    /// Says, when qemu-storage-daemon is missing, that its death cases were
    /// not generated; when it is installed, that they were.
    @Test(deathQSDInstalled) func theDeathCasesRunAgainstQemuStorageDaemon() {
        #expect(deathBackends.contains(.qemuStorageDaemon))
    }

    /// Resets until the device has reconnected (a backend that was just
    /// started may not listen yet: qemu-storage-daemon binds, then listens).
    static func resetAndReconnect(_ device: VirtioBlkDevice) -> Bool {
        eventually {
            device.writeStatus(0)
            if device.isBackendConnected { return true }
            usleep(10_000)
            return false
        }
    }

    /// A backend killed while the device is idle (queue running, nothing in
    /// flight, no message under way) is noticed without any message: the
    /// watcher sees the hang-up. The device sets NEEDS_RESET and ISR bit 1,
    /// raises msix_config (masked: it latches in the PBA, and unmask delivers
    /// it), and logs exactly one line; later failures within the rate limit
    /// are counted, not logged. A reset then reconnects to the restarted
    /// backend. In every delivery mode (the watcher is the same thread that
    /// waits on the call fds with `.userspace`).
    @Test(arguments: deathBackends, InterruptDelivery.allCases)
    func anIdleDeviceNoticesItsBackendDieAndRaisesTheConfigVector(
        kind: VhostUserBackendProcess.Kind, delivery: InterruptDelivery
    ) throws {
        let image = try deathImage()
        let backend = try KillableBackend(kind, image: image)
        let vm = try TinyVM()
        let device = try VirtioBlkDevice(vm: vm, socketPath: backend.socketPath, delivery: delivery)
        let log = CapturedLog()
        device.logger = log.logger
        var driver = DeathDriver(device: device, memory: vm.memory)
        driver.enableMSIX()
        let ok1 = driver.initialise()
        #expect(ok1)
        driver.submitReads(2, first: 0)
        #expect(eventually { driver.used == 2 })
        #expect(driver.isr == 0)
        let messages = device.frontend.messagesSent

        backend.kill()
        #expect(
            eventually { device.status & VirtioBlkDevice.Status.needsReset != 0 }, "NEEDS_RESET without any message")
        #expect(device.frontend.messagesSent == messages, "noticed by the watcher, not by a message")
        #expect(!device.isBackendConnected)
        #expect(driver.isr == 2, "ISR bit 1: configuration change")
        #expect(driver.isr == 0, "ISR is read to clear")
        #expect(device.emulator.isPending(0), "msix_config raised, held by its mask")
        driver.mask(0, false)
        #expect(!device.emulator.isPending(0), "and delivered on unmask")
        let lines = log.all
        #expect(lines.count == 1, "\(lines)")
        #expect(lines.first?.0 == .error)
        #expect(
            lines.first?.1.contains("lost") == true && lines.first?.1.contains(backend.socketPath) == true, "\(lines)")
        #expect(lines.first?.1.contains("DEVICE_NEEDS_RESET") == true)

        // Resets and DRIVER_OKs against no backend, in a burst: each fails
        // (NEEDS_RESET again); the rate limit keeps the log to a line a second.
        let burst = ContinuousClock.now
        for _ in 0..<20 {
            _ = driver.initialise()
            #expect(device.status & VirtioBlkDevice.Status.needsReset != 0)
        }
        let seconds = Int((ContinuousClock.now - burst).components.seconds)
        #expect(log.all.count <= 2 + seconds, "\(log.all.count) lines for 40 failures in \(seconds) s")
        #expect(device.suppressedLogLines > 0 || log.all.count > 1)

        try backend.restart()
        #expect(Self.resetAndReconnect(device), "\(String(describing: device.lastBackendError))")
        #expect(device.status == 0)
        let ok2 = driver.initialise()
        #expect(ok2)
        driver.submitReads(4, first: 8)
        #expect(eventually { driver.used == 4 })
        for i in 0..<4 {
            #expect(driver.statusByte(i) == 0)
            let right = vm.memory.bytes(at: DeathDriver.buffer(i), count: 512) == image.filled(sector: 8 + i)
            #expect(right, "request \(i): the image's bytes")
        }
        #expect(device.reconnectCount == 1)
        #expect(log.all.contains { $0.1.contains("reconnected") })
        device.writeStatus(0)
    }

    enum KillPoint: CaseIterable, CustomStringConvertible {
        case setup, inFlight, queueVectorMasked, idle
        var description: String {
            switch self {
            case .setup: "during setup"
            case .inFlight: "with requests in flight"
            case .queueVectorMasked: "with requests in flight and the queue's vector masked"
            case .idle: "while idle"
            }
        }
    }

    /// `IRQFD_DEATH_CYCLES` (default 100) kills at seeded random points
    /// (`IRQFD_DEATH_SEED` repeats a run): each time the device needs a reset
    /// and raises msix_config, a reset reconnects to the restarted backend,
    /// and four reads complete with status 0 and the image's bytes. Every
    /// connection's descriptors (the front-end's socket and the watcher's
    /// copy, by inode) are closed once it is replaced; the device's own
    /// eventfds close at release; the VM's free GSIs are as they were.
    @Test(arguments: deathBackends)
    func aHundredKillsAtRandomPointsThenReconnectsLeakNothing(kind: VhostUserBackendProcess.Kind) throws {
        let cycles = environmentCount("IRQFD_DEATH_CYCLES", default: 100)
        let seed = announcedSeed("IRQFD_DEATH_SEED", for: "backend death (\(kind.rawValue))")
        var random = SplitMix64(seed: seed)
        let image = try deathImage()
        let backend = try KillableBackend(kind, image: image)
        let vm = try TinyVM()
        let freeBefore = vm.irqfd.freeGsiCount
        let began = ContinuousClock.now
        var owned: [OwnedDescriptor] = []
        var killed: [KillPoint: Int] = [:]
        var idleNotice: [Duration] = []  // the process gone -> NEEDS_RESET seen, idle kills (printed, not asserted)
        do {
            // Not plugged into the VM (its buses would keep it): released at the end of this scope.
            let device = try VirtioBlkDevice(vm: vm, socketPath: backend.socketPath)
            device.logger = CapturedLog().logger  // keep the test output readable
            var driver = DeathDriver(device: device, memory: vm.memory)
            driver.enableMSIX()
            _ = try device.emulator.event(for: 1)  // queue 0's route, kept across resets
            var freeWithRoute = vm.irqfd.freeGsiCount
            for cycle in 0..<cycles {
                let point = KillPoint.allCases.randomElement(using: &random)!
                killed[point, default: 0] += 1
                let connection = device.connectionDescriptors.map { OwnedDescriptor($0.rawValue) }
                #expect(
                    connection.count == 2 && connection.allSatisfy(\.isOpen),
                    "cycle \(cycle): socket and the watcher's copy")
                switch point {
                case .setup:
                    let at = Int.random(in: 0..<DeathDriver.stepCount, using: &random)
                    for k in 0..<at { driver.step(k) }
                    backend.kill()
                    for k in at..<DeathDriver.stepCount { driver.step(k) }  // the driver carries on, unaware
                case .inFlight, .queueVectorMasked:
                    let ok3 = driver.initialise()
                    #expect(ok3, "cycle \(cycle)")
                    if point == .queueVectorMasked { driver.mask(1, true) }
                    driver.submitReads(8, first: Int.random(in: 0..<56, using: &random))
                    usleep(UInt32.random(in: 0..<2000, using: &random))
                    backend.kill()
                case .idle:
                    let ok4 = driver.initialise()
                    #expect(ok4, "cycle \(cycle)")
                    driver.submitReads(1, first: 0)
                    #expect(eventually { driver.used == 1 }, "cycle \(cycle)")
                    backend.kill()
                }
                let gone = ContinuousClock.now
                let noticed = eventually { device.status & VirtioBlkDevice.Status.needsReset != 0 }
                if point == .idle { idleNotice.append(ContinuousClock.now - gone) }
                #expect(
                    noticed,
                    "cycle \(cycle), killed \(point): NEEDS_RESET (status 0x\(String(device.status, radix: 16)))")
                #expect(driver.isr & 2 != 0, "cycle \(cycle): ISR bit 1")
                #expect(
                    device.emulator.isPending(0),
                    "cycle \(cycle), killed \(point): msix_config raised (held by its mask)")
                driver.mask(0, false)
                driver.mask(0, true)
                if point == .queueVectorMasked { driver.mask(1, false) }

                try backend.restart()
                #expect(Self.resetAndReconnect(device), "cycle \(cycle): reconnected")
                let ok5 = driver.initialise()
                #expect(ok5, "cycle \(cycle): re-initialised")
                let first = Int.random(in: 0..<60, using: &random)
                driver.submitReads(4, first: first)
                #expect(eventually { driver.used == 4 }, "cycle \(cycle): requests after reconnect")
                for i in 0..<4 {
                    #expect(driver.statusByte(i) == 0, "cycle \(cycle) request \(i)")
                    let right =
                        vm.memory.bytes(at: DeathDriver.buffer(i), count: 512) == image.filled(sector: first + i)
                    #expect(right, "cycle \(cycle) request \(i): the image's bytes")
                }
                // The dead connection's socket and the watcher's copy (closed by its thread) are gone.
                #expect(
                    eventually(.seconds(5)) { connection.allSatisfy { !$0.isOpen } },
                    "cycle \(cycle): old connection's descriptors closed")
                // The first delivery of msix_config may make its route (kept for the emulator's life).
                if cycle == 0 { freeWithRoute = vm.irqfd.freeGsiCount }
                #expect(vm.irqfd.freeGsiCount == freeWithRoute, "cycle \(cycle): no GSI made or lost")
            }
            #expect(device.reconnectCount == cycles)
            device.writeStatus(0)
            owned = (device.connectionDescriptors + device.ownedDescriptors).map { OwnedDescriptor($0.rawValue) }
        }
        let elapsed = ContinuousClock.now - began
        idleNotice.sort()
        let median = idleNotice.isEmpty ? "-" : "\(idleNotice[idleNotice.count / 2])"
        print(
            "backend death (\(kind.rawValue)): \(cycles) kill/reconnect cycles in \(elapsed) (\(killed.map { "\($0.key): \($0.value)" }.sorted().joined(separator: ", "))); idle kill noticed in median \(median), max \(idleNotice.last.map { "\($0)" } ?? "-")"
        )
        #expect(
            eventually(.seconds(5)) { owned.allSatisfy { !$0.isOpen } }, "the device's descriptors closed at release")
        #expect(vm.irqfd.freeGsiCount == freeBefore)
    }
}

#endif

#if os(Linux)
/// The guest's side: virtio_blk.S with recovery on (`VirtioBlkGuestLayout.recover`).
@Suite(needsKVM) struct BackendDeathGuestTests {
    typealias L = VirtioBlkGuestLayout

    /// Three kills while the driver guest runs four gated batches of four
    /// reads: idle at the gate, with a batch in flight, and with the config
    /// vector masked (nothing reaches the guest and PBA bit 0 is set until
    /// the host unmasks it). Each time the guest takes the config interrupt,
    /// reads DEVICE_NEEDS_RESET in device_status, resets and re-initialises
    /// the device itself (retrying while the backend is down) and runs the
    /// interrupted batch again against the restarted backend: every request
    /// completes with status 0 and the image's bytes, and the guest exits 0.
    @Test(arguments: deathBackends)
    func theGuestTakesTheConfigInterruptSeesNeedsResetAndReinitialisesAgainstARestartedBackend(
        kind: VhostUserBackendProcess.Kind
    ) throws {
        let image = try deathImage()
        let backend = try KillableBackend(kind, image: image)
        let vm = try TinyVM()
        let device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath)
        device.logger = CapturedLog().logger
        try vm.load(GuestProgram.virtioBlk.image)
        let m = vm.memory
        m.write32(4, at: L.batches)
        m.write32(4, at: L.requestsPerBatch)
        m.write32(0, at: L.firstSector)
        m.write32(0, at: L.type)
        m.write32(1, at: L.queues)
        m.write32(0, at: L.destination(queue: 0))
        m.write32(1, at: L.gated)
        m.write32(1, at: L.recover)
        let configInterrupts = { Int(m.read32(at: InterruptCounterLayout.count(cpu: 0, vector: L.idtVector(msix: 0)))) }
        let recoveries = { Int(m.read32(at: L.recoveries)) }
        let needsReset = VirtioBlkDevice.Status.needsReset
        vm.start()
        defer {
            vm.stop()
            _ = vm.wait()
        }
        m.write32(1, at: L.gate)
        #expect(vm.waitUntil(timeout: .seconds(30)) { m.read32(at: L.batchesDone) == 1 })

        // 1. Idle: the guest waits at the gate for batch 2.
        backend.kill()
        #expect(eventually { device.status & needsReset != 0 || recoveries() > 0 }, "the device needs a reset")
        #expect(vm.waitUntil(timeout: .seconds(30)) { recoveries() >= 1 }, "the guest saw it")
        #expect(m.read32(at: L.lastStatus) & UInt32(needsReset) != 0, "device_status as the guest read it")
        #expect(configInterrupts() >= 1)
        try backend.restart()
        #expect(
            vm.waitUntil(timeout: .seconds(30)) { device.reconnectCount == 1 && device.status == 0x0F },
            "the guest re-initialised against the new backend")
        m.write32(2, at: L.gate)
        #expect(
            vm.waitUntil(timeout: .seconds(30)) { m.read32(at: L.batchesDone) == 2 },
            "batch 2 after the first reconnect")

        // 2. In flight: batch 3 submitted, then the kill.
        let before2 = recoveries()
        m.write32(3, at: L.gate)
        usleep(UInt32.random(in: 0..<3000))
        backend.kill()
        #expect(eventually { device.status & needsReset != 0 || recoveries() > before2 })
        #expect(vm.waitUntil(timeout: .seconds(30)) { recoveries() > before2 })
        try backend.restart()
        #expect(
            vm.waitUntil(timeout: .seconds(30)) { m.read32(at: L.batchesDone) == 3 },
            "batch 3, run again after the second reconnect: status 0x\(String(device.status, radix: 16)), resetting \(device.isResetting), connected \(device.isBackendConnected), reconnects \(device.reconnectCount), running \(device.isRunning(queue: 0)), recoveries \(recoveries()), guest status 0x\(String(m.read32(at: L.lastStatus), radix: 16)), \(device.counters), \(String(describing: device.lastBackendError))"
        )
        // DRIVER_OK reads back at once and the backend start completes on the device's worker: wait for
        // that start (the second reconnect, the queue running), or the next kill could hit a backend the
        // device never connected to.
        #expect(
            vm.waitUntil(timeout: .seconds(30)) {
                device.reconnectCount == 2 && device.status == 0x0F && device.isRunning(queue: 0)
            }, "the guest re-initialised against the second backend")

        // 3. The config vector masked: NEEDS_RESET, but the interrupt waits in the PBA.
        let before3 = recoveries()
        let interrupts3 = configInterrupts()
        device.emulator.write(bar: 1, offset: 12, size: 4, value: 1)
        backend.kill()
        #expect(eventually { device.status & needsReset != 0 })
        #expect(eventually { device.emulator.isPending(0) }, "PBA bit 0")
        usleep(50_000)
        #expect(configInterrupts() == interrupts3, "nothing while masked")
        #expect(recoveries() == before3, "and the guest did not recover yet")
        try backend.restart()
        device.emulator.write(bar: 1, offset: 12, size: 4, value: 0)
        #expect(vm.waitUntil(timeout: .seconds(30)) { recoveries() > before3 }, "unmask delivered it")
        #expect(
            vm.waitUntil(timeout: .seconds(30)) {
                device.reconnectCount == 3 && device.status == 0x0F && device.isRunning(queue: 0)
            }, "the guest re-initialised against the third backend")
        m.write32(4, at: L.gate)
        let outcome = vm.wait(timeout: .seconds(60))
        #expect(
            outcome == .exited(code: 0),
            "\(outcome); device \(device.counters); \(String(describing: device.lastBackendError))")
        #expect(m.read32(at: L.completed) == 16)
        #expect(m.read32(at: L.failed) == 0)
        for j in 0..<16 {
            let right = m.bytes(at: L.buffer(queue: 0, request: j), count: 512) == image.filled(sector: j)
            #expect(right, "request \(j): the image's bytes")
        }
        #expect(recoveries() >= 3)
        #expect(device.reconnectCount >= 3)
        print(
            "backend death, guest (\(kind.rawValue)): \(recoveries()) guest recoveries, \(configInterrupts()) config interrupts, \(device.reconnectCount) reconnects"
        )
    }
}

/// A log handler that stops the first error line until the test lets it go:
/// it holds the device's watcher thread inside the device's own call.
final class GatedLog: Sendable {
    private let entered = DispatchSemaphore(value: 0)
    private let gate = DispatchSemaphore(value: 0)
    private let held = Mutex(false)
    var logger: Logger { TestLogHandler.logger { [self] event in hold(event) } }
    /// Waits until a thread is held in the handler.
    func waitEntered(_ timeout: Duration) -> Bool {
        entered.wait(timeout: .now() + .seconds(Int(timeout.components.seconds))) == .success
    }
    /// Lets the held thread go.
    func open() { gate.signal() }
    private func hold(_ event: LogEvent) {
        guard event.level == .error else { return }
        let first = held.withLock { h in
            defer { h = true }
            return !h
        }
        guard first else { return }
        entered.signal()
        gate.wait()
    }
}

@Suite(needsKVM) struct ReleaseOnTheWatcherThreadTests {
    /// The device's watcher thread holds the device while it reports a
    /// hang-up. If the test's reference goes meanwhile, the device's deinit
    /// runs on that thread, which must not wait for itself to end: the
    /// device's descriptors close at once, not after the 5 s wait.
    @Test(arguments: deathBackends)
    func aDeviceWhoseLastReferenceGoesOnItsWatcherThreadClosesItsDescriptorsAtOnce(_ kind: VhostUserBackendProcess.Kind)
        throws
    {
        let image = try deathImage()
        let backend = try KillableBackend(kind, image: image)
        let vm = try TinyVM()
        let log = GatedLog()
        var owned: [OwnedDescriptor] = []
        do {
            // Not plugged into the VM (its buses would keep it).
            let device = try VirtioBlkDevice(vm: vm, socketPath: backend.socketPath)
            device.logger = log.logger
            owned = (device.connectionDescriptors + device.ownedDescriptors).map { OwnedDescriptor($0.rawValue) }
            try #require(owned.count == 4 && owned.allSatisfy(\.isOpen))
            backend.kill()
            try #require(log.waitEntered(.seconds(10)), "the watcher reports the hang-up")
        }
        // The watcher's reference is the last: letting it go runs the deinit there.
        let released = ContinuousClock.now
        log.open()
        #expect(eventually(.seconds(10)) { owned.allSatisfy { !$0.isOpen } }, "the device's descriptors closed")
        let took = ContinuousClock.now - released
        #expect(took < .seconds(2), "closed \(took) after the watcher let the device go")
    }
}
#endif
