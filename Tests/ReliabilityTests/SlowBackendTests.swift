#if os(Linux)
import Foundation
import IrqFdCore
import MSIX
import PCI
import Synchronization
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

// A vhost-user backend that is slow or hostile must not stall the guest,
// keep a reset from completing, or raise interrupts for queues it no longer
// serves. The device is driven through its own MMIO and configuration entry
// points (the code a vCPU's exit reaches) while a real VM on /dev/kvm takes
// its interrupts (the interrupt-counting guest); the backend is scripted in
// the test (`ScriptedBlkBackend`).

/// A driver of the device through its MMIO entry points that, unlike a
/// host call, never waits for the device's worker: it reads device_status
/// as a guest does. Queue q's rings at 0x20000 + 0x4000 q, size 32.
struct PolledDriver {
    let device: VirtioBlkDevice
    static let common = VirtioBlkDevice.virtioBase + VirtioBlkDevice.commonOffset
    /// The longest access so far (every access is timed).
    var longest: Duration = .zero
    /// Which access was the longest (offset, and the value written).
    var longestAccess = ""
    var accesses = 0

    init(_ device: VirtioBlkDevice) { self.device = device }

    /// A driver of `device` with MSI-X on (``enableMSIX()``) and the device
    /// reset (``reset(timeout:)``, its outcome not looked at): where each
    /// test starts.
    static func msixOnAfterReset(_ device: VirtioBlkDevice) -> PolledDriver {
        var driver = PolledDriver(device)
        driver.enableMSIX()
        _ = driver.reset()
        return driver
    }

    mutating func w(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        let start = ContinuousClock.now
        device.write(address: Self.common + offset, size: size, value: value)
        note(ContinuousClock.now - start, "write 0x\(String(offset, radix: 16)) = 0x\(String(value, radix: 16))")
    }

    mutating func r(_ offset: UInt64, _ size: Int) -> UInt64 {
        let start = ContinuousClock.now
        let value = device.read(address: Self.common + offset, size: size)
        note(ContinuousClock.now - start, "read 0x\(String(offset, radix: 16))")
        return value
    }

    private mutating func note(_ d: Duration, _ what: @autoclosure () -> String) {
        if d > longest {
            longest = d
            longestAccess = what()
        }
        accesses += 1
    }

    /// MSI-X on, vector 0 (config) and 1...n (queues) to IDT vector 0x40 + v on APIC 0, unmasked.
    func enableMSIX() {
        let control = VirtioBlkDevice.msixCapabilityOffset + 2
        device.configWrite(offset: control, size: 2, value: UInt32(device.emulator.messageControl | 0x8000))
        for v in 0..<device.emulator.layout.vectorCount {
            let entry = VirtioBlkDevice.msixBase + 16 * UInt64(v)
            device.write(address: entry, size: 4, value: 0xFEE0_0000)
            device.write(address: entry + 4, size: 4, value: 0)
            device.write(address: entry + 8, size: 4, value: 0x40 + UInt64(v))
            device.write(address: entry + 12, size: 4, value: 0)
        }
    }

    func mask(_ v: Int, _ masked: Bool) {
        device.write(address: VirtioBlkDevice.msixBase + 16 * UInt64(v) + 12, size: 4, value: masked ? 1 : 0)
    }

    /// Writes 0 and reads device_status until it is 0 (virtio 1.2 section
    /// 4.1.4.3.1); returns whether it did within `timeout`, and whether it
    /// read non-zero at least once first.
    mutating func reset(timeout: Duration = .seconds(20)) -> (done: Bool, sawNonZero: Bool) {
        w(0x14, 1, 0)
        var sawNonZero = false
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if r(0x14, 1) == 0 { return (true, sawNonZero) }
            sawNonZero = true
            usleep(1000)
        }
        return (false, sawNonZero)
    }

    /// ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK, msix_config = 0, and
    /// every queue set up with vector q + 1 and enabled; not DRIVER_OK.
    mutating func configure() {
        acknowledgeAndAcceptFeatures(write: { w($0, $1, $2) })
        w(0x10, 2, 0)
        for q in 0..<device.queueCount {
            let ring = 0x20000 + 0x4000 * UInt64(q)
            setUpQueue(q, size: 32, vector: UInt16(q + 1), at: ring, write: { w($0, $1, $2) })
            w(0x1C, 2, 1)
        }
    }

    mutating func driverOK() { w(0x14, 1, 0x0F) }

    /// Waits (reading as a guest would) until the start is done: every queue
    /// running, or DEVICE_NEEDS_RESET.
    func started(timeout: Duration = .seconds(60)) -> Bool {
        eventually(timeout) {
            (0..<device.queueCount).allSatisfy { device.isRunning(queue: $0) }
                || device.status & VirtioBlkDevice.Status.needsReset != 0
        }
    }
}

/// The reply delay of the stall measurement: IRQFD_STALL_DELAY_MS, else
/// 100 ms (the issue's 4.9 s makes a run take minutes; run it once by hand).
let stallDelay: Duration = .milliseconds(
    Int(ProcessInfo.processInfo.environment["IRQFD_STALL_DELAY_MS"] ?? "") ?? 100)

/// A VM running the interrupt-counting guest on one vCPU.
final class CountingVM {
    let vm: TinyVM
    init() throws {
        vm = try TinyVM()
        try vm.load(GuestProgram.interruptCounter.image)
        vm.start()
        guard vm.waitUntil({ vm.memory.read32(at: InterruptCounterLayout.ready(cpu: 0)) == 1 }) else {
            throw TestFailureReason("the interrupt-counting guest did not start")
        }
    }
    deinit {
        vm.stop()
        _ = vm.wait()
    }
    /// Interrupts of MSI-X vector `v` (IDT vector 0x40 + v) the guest took.
    func interrupts(_ v: Int) -> UInt32 {
        vm.memory.read32(at: InterruptCounterLayout.count(cpu: 0, vector: UInt8(0x40 + v)))
    }
    /// Waits for signals in flight to land (interrupt injection is asynchronous).
    func settle() { usleep(100_000) }
}

/// A scripted backend, a counting VM, and a virtio-blk device on the VM
/// served by the backend: where most tests start.
final class ScriptedDisk {
    let backend: ScriptedBlkBackend
    let host: CountingVM
    let device: VirtioBlkDevice
    init(queues: Int = 1, delivery: InterruptDelivery = .irqfd) throws {
        backend = try ScriptedBlkBackend()
        host = try CountingVM()
        device = try VirtioBlkDevice.attach(
            to: host.vm, socketPath: backend.socketPath, queues: queues, delivery: delivery)
    }
}

@Suite(needsKVM, .serialized) struct SlowBackendTests {
    /// DRIVER_OK and the reset return at once while the backend holds every
    /// reply: the write does not wait on it. device_status reads DRIVER_OK
    /// (no NEEDS_RESET) while the start is under way, and after the reset
    /// write it reads non-zero until the backend has stopped the rings,
    /// then 0. MSI-X table and PBA accesses from another thread go through
    /// meanwhile.
    @Test(arguments: [1, 8])
    func aGuestAccessDoesNotWaitForTheBackend(queues: Int) throws {
        let disk = try ScriptedDisk(queues: queues)
        let (backend, device) = (disk.backend, disk.device)
        var driver = PolledDriver.msixOnAfterReset(device)
        driver.configure()

        backend.script.holdReplies = true
        driver.driverOK()
        // Returned with the backend holding its replies: nothing failed, nothing started yet.
        let during = driver.r(0x14, 1)
        #expect(during == 0x0F, "DRIVER_OK returned without waiting; no NEEDS_RESET")
        #expect(!device.isRunning(queue: 0))
        // The MSI-X PBA and table from another thread, while the start waits on the backend.
        let pba = ContinuousClock.now
        _ = device.read(address: VirtioBlkDevice.msixBase + UInt64(VirtioBlkDevice.pbaOffset), size: 8)
        device.write(address: VirtioBlkDevice.msixBase + 12, size: 4, value: 0)
        let pbaTime = ContinuousClock.now - pba
        backend.script.holdReplies = false
        #expect(driver.started())
        #expect(device.status == 0x0F, "\(String(describing: device.lastBackendError))")

        backend.script.holdReplies = true
        driver.w(0x14, 1, 0)
        let resetting = driver.r(0x14, 1)
        #expect(resetting != 0, "the reset is under way: device_status is not 0 yet")
        backend.script.holdReplies = false
        let reset = driver.reset()
        #expect(reset.done)
        #expect(device.reconnectCount == 0, "the backend stopped its rings: the connection stays")
        #expect(device.lastBackendError == nil)
        print(
            "held replies, \(queues) queue(s): longest of \(driver.accesses) accesses \(driver.longest) "
                + "(\(driver.longestAccess)), PBA/table \(pbaTime)")
    }

    /// The stall figure: every reply delayed by `stallDelay` (4.9 s in the
    /// issue's measurement), the longest guest access over a whole
    /// initialisation, DRIVER_OK, reset and re-initialisation, and how long
    /// the start and the reset took on the worker. Printed for the
    /// Reliability table; no timing is asserted (timings here are noisy):
    /// `aGuestAccessDoesNotWaitForTheBackend` checks the behaviour.
    @Test(arguments: [1, 8])
    func theLongestAccessWithEveryReplyDelayed(queues: Int) throws {
        let disk = try ScriptedDisk(queues: queues)
        let (backend, device) = (disk.backend, disk.device)
        var driver = PolledDriver.msixOnAfterReset(device)
        backend.script.replyDelay = stallDelay
        driver.configure()
        let start = ContinuousClock.now
        driver.driverOK()
        let outcome = driver.started(timeout: .seconds(120))
        let startTime = ContinuousClock.now - start
        #expect(outcome)
        let resetStart = ContinuousClock.now
        let reset = driver.reset(timeout: .seconds(120))
        let resetTime = ContinuousClock.now - resetStart
        #expect(reset.done)
        driver.configure()
        driver.driverOK()
        _ = driver.started(timeout: .seconds(120))
        print(
            "reply delay \(stallDelay), \(queues) queue(s): longest of \(driver.accesses) guest accesses "
                + "\(driver.longest) (\(driver.longestAccess)); DRIVER_OK done after \(startTime) "
                + "(status \(device.status)), reset after "
                + "\(resetTime); deadlines expired \(device.expiredDeadlines)")
    }

    enum ResetFault: String, CaseIterable, CustomStringConvertible {
        /// GET_VRING_BASE answered for another ring.
        case otherRing
        /// GET_VRING_BASE never answered.
        case silent
        /// The backend goes away at GET_VRING_BASE (and nobody listens any more).
        case gone
        var description: String { rawValue }
    }

    /// device_status reads 0 after the reset whatever the backend does, and
    /// a backend that answered for another ring or did not answer loses its
    /// connection (the next reset or DRIVER_OK makes a new one).
    @Test(arguments: ResetFault.allCases)
    func aResetAlwaysCompletes(fault: ResetFault) throws {
        let disk = try ScriptedDisk()
        let (backend, device) = (disk.backend, disk.device)
        var driver = PolledDriver.msixOnAfterReset(device)
        driver.configure()
        driver.driverOK()
        #expect(driver.started())
        #expect(device.isRunning(queue: 0))
        switch fault {
        case .otherRing: backend.script.wrongVringBaseIndex = true
        case .silent: backend.script.silentOnGetVringBase = true
        case .gone: backend.script.goneOnGetVringBase = true
        }
        let reset = driver.reset()
        #expect(reset.done, "device_status still \(device.status) after the reset")
        if fault == .silent {
            // The write returned before the backend answered: the reset was under way, then done.
            #expect(reset.sawNonZero, "device_status read non-zero until the reset was done")
        }
        #expect(device.status == 0)
        #expect(eventually { backend.isClosed(0) }, "the connection that broke the reset is closed")
        #expect(device.counters.backendFailures == 1)
        if fault == .otherRing {
            guard case .badReply(let request, _) = device.lastBackendError else {
                Issue.record("\(String(describing: device.lastBackendError))")
                return
            }
            #expect(request == .getVringBase)
        }
        // The device is usable again: against the same backend (reconnected) or, once gone, none.
        backend.script = .init()
        driver.configure()
        driver.driverOK()
        #expect(driver.started())
        if fault == .gone {
            #expect(device.status & VirtioBlkDevice.Status.needsReset != 0, "nobody listens: DRIVER_OK fails")
        } else {
            #expect(device.status == 0x0F, "\(String(describing: device.lastBackendError))")
            #expect(backend.connectionCount == 2)
        }
    }

    /// Only the connection serving the queues, while DRIVER_OK stands, can
    /// raise their interrupt: a backend signalling its call fd before
    /// DRIVER_OK, after a reset (and after the driver set the queues up
    /// again, vectors and all, before the next DRIVER_OK), or after its
    /// connection was dropped and replaced delivers nothing. The current
    /// connection's signals arrive, and masking keeps its meaning: masked, a
    /// signal is pending (PBA) and unmask delivers exactly one. Every
    /// delivery mode: with `.userspace` the call fds are the device's own
    /// eventfds, which its watcher waits on.
    @Test(arguments: InterruptDelivery.allCases)
    func onlyTheCurrentConnectionRaisesAQueueInterrupt(delivery: InterruptDelivery) throws {
        let disk = try ScriptedDisk(delivery: delivery)
        let (backend, host, device) = (disk.backend, disk.host, disk.device)
        var driver = PolledDriver.msixOnAfterReset(device)
        driver.configure()
        host.settle()
        // Before DRIVER_OK: whatever it holds, nothing reaches the guest.
        backend.signalCalls(connection: 0)
        host.settle()
        #expect(host.interrupts(1) == 0, "a signal before DRIVER_OK")

        driver.driverOK()
        #expect(driver.started())
        #expect(device.isRunning(queue: 0))
        backend.signalCalls(connection: 0)
        #expect(eventually { host.interrupts(1) == 1 }, "the current connection's signal: \(host.interrupts(1))")

        // Masked: pending, then exactly one on unmask.
        driver.mask(1, true)
        backend.signalCalls(connection: 0)
        backend.signalCalls(connection: 0)
        host.settle()
        #expect(host.interrupts(1) == 1)
        #expect(
            device.emulator.isPending(1)
                || device.read(
                    address: VirtioBlkDevice.msixBase + UInt64(VirtioBlkDevice.pbaOffset), size: 8) & 2 != 0
        )
        driver.mask(1, false)
        host.settle()
        #expect(host.interrupts(1) == 2, "one interrupt per pending bit on unmask")

        // After a reset, the same connection's old call fd reaches nobody.
        let reset1 = driver.reset()
        #expect(reset1.done)
        backend.signalCalls(connection: 0)
        host.settle()
        #expect(host.interrupts(1) == 2, "a signal after the reset")
        // Set up again (vector 1 on queue 0), not yet DRIVER_OK: still nobody's.
        driver.configure()
        backend.signalCalls(connection: 0)
        host.settle()
        #expect(host.interrupts(1) == 2, "a signal after the reset, queues set up, before DRIVER_OK")

        // Dropped (it answers a reset for another ring) and replaced: the old connection reaches nobody.
        driver.driverOK()
        #expect(driver.started())
        backend.script.wrongVringBaseIndex = true
        let reset2 = driver.reset()
        #expect(reset2.done)
        backend.script = .init()
        #expect(eventually { backend.connectionCount == 2 })
        driver.configure()
        driver.driverOK()
        #expect(driver.started())
        #expect(device.status == 0x0F)
        backend.signalCalls(connection: 0)
        host.settle()
        #expect(host.interrupts(1) == 2, "a signal from the replaced connection")
        backend.signalCalls(connection: 1)
        #expect(eventually { host.interrupts(1) == 3 }, "the new connection's signal: \(host.interrupts(1))")
        let reset3 = driver.reset()
        #expect(reset3.done)
    }

    /// A virtio-net control-queue request that waits on the backend
    /// (VQ_PAIRS_SET 2 sends SET_VRING_ENABLE for the four rings, each
    /// acknowledged after 600 ms) is served off the device lock: MSI-X PBA
    /// reads from another thread meanwhile do not wait for it. The longest
    /// read is printed (the target is under 10 ms); the bound asserted is
    /// generous so that load cannot fail it, and far below the 2.4 s the
    /// request takes, which a read waiting on the request would see.
    @Test func aControlRequestWaitingOnTheBackendDoesNotHoldMSIXAccesses() throws {
        let backend = try ScriptedBlkBackend(features: ScriptedBlkBackend.features | VirtioNet.Feature.multiQueue)
        let vm = try TinyVM(.init(cpus: 1))
        let device = try VirtioNetDevice.attach(to: vm, socketPath: backend.socketPath, queuePairs: 2)
        defer { device.disconnect() }
        let common = VirtioNetDevice.virtioBase + VirtioNetDevice.commonOffset
        let w = { (o: UInt64, size: Int, v: UInt64) in device.write(address: common + o, size: size, value: v) }
        let r = { (o: UInt64, size: Int) in device.read(address: common + o, size: size) }
        let mac: UInt32 = 1 << 5
        let controlQueue: UInt32 = 1 << 17
        let multiQueue: UInt32 = 1 << 22
        #expect(resetAndNegotiateFeatures(mac | controlQueue | multiQueue, read: r, write: w))
        func ring(_ q: Int) -> UInt64 { 0x20000 + 0x10000 * UInt64(q) }
        for q in 0..<device.queueCount {
            setUpQueue(q, size: 16, vector: UInt16(q + 1), at: ring(q), write: w)
            w(0x1C, 2, 1)
        }
        w(0x14, 1, 0x0F)
        device.waitUntilIdle()
        let control = try #require(device.deviceType.controlQueue)
        try #require(device.status == 0x0F && device.isRunning(queue: control))

        // VQ_PAIRS_SET 2 (class 4, command 0, le16 2), then one device-writable ack byte.
        let request: UInt64 = 0x90000
        let ack = request + 0x100
        vm.memory.load([4, 0, 2, 0], at: request)
        vm.memory.load([0xFF], at: ack)
        vm.memory.write64(request, at: ring(control))
        vm.memory.write64(4 | 1 << 32 | 1 << 48, at: ring(control) + 8)  // 4 bytes, NEXT, next 1
        vm.memory.write64(ack, at: ring(control) + 16)
        vm.memory.write64(1 | 2 << 32, at: ring(control) + 24)  // 1 byte, WRITE
        vm.memory.store(UInt16(0), at: ring(control) + 0x1004)
        vm.memory.store(UInt16(1), at: ring(control) + 0x1002)
        backend.script.replyDelay = .milliseconds(600)
        // What is measured is the lock, not the deadline: a loaded machine must not turn the request into a failure.
        device.operationTimeout = .seconds(60)
        // SET_VRING_ENABLE (18) requests: recorded as they arrive, before the reply.
        func enables() -> Int { backend.requests(connection: 0).filter { $0 == 18 }.count }
        let enablesBefore = enables()
        let pba = VirtioNetDevice.msixBase + UInt64(VirtioNetDevice.pbaOffset)
        device.write(address: VirtioNetDevice.notifyAddress(queue: control), size: 2, value: UInt64(control))

        var longest = Duration.zero
        var reads = 0
        let start = ContinuousClock.now
        while vm.memory.load(UInt16.self, at: ring(control) + 0x2002) != 1, ContinuousClock.now - start < .seconds(20) {
            let before = ContinuousClock.now
            _ = device.read(address: pba, size: 8)
            longest = max(longest, ContinuousClock.now - before)
            reads += 1
            usleep(200)
        }
        let answered = ContinuousClock.now - start
        #expect(vm.memory.load(UInt16.self, at: ring(control) + 0x2002) == 1, "the request was answered")
        #expect(vm.memory.bytes(at: ack, count: 1) == [VirtioNet.Control.ok])
        #expect(enables() - enablesBefore == 4, "SET_VRING_ENABLE for rings 0...3")
        #expect(device.status == 0x0F)
        print(
            "control request answered after \(answered) (SET_VRING_ENABLE x4, replies delayed 600 ms): "
                + "longest of \(reads) PBA reads meanwhile \(longest)")
        #expect(longest < .seconds(1), "a PBA read waited \(longest)")
    }

    /// When the backend starts answering slowly.
    enum SlowFrom: String, CaseIterable, CustomStringConvertible {
        /// Every reply from the first, the handshake's included.
        case handshake
        /// Every reply after the handshake (DRIVER_OK's start and the rest).
        case start
        var description: String { rawValue }
    }

    /// `irqfd run --timeout 3` with the virtio-blk driver guest and a backend
    /// that delays every reply by 4.9 s ends within the timeout and 1 s: a
    /// slow handshake runs into the run's deadline and exits 124 with a line
    /// saying so, and a slow start does not hold the guest (it sets
    /// DRIVER_OK and exits 0 at once). The wall time is printed.
    @Test(arguments: SlowFrom.allCases)
    func irqfdRunHonoursItsTimeoutWithEveryReplyDelayed(slowFrom: SlowFrom) throws {
        let delay: Duration = .milliseconds(4900)
        let timeout = 3
        let backend = try ScriptedBlkBackend()
        if slowFrom == .handshake { backend.script.replyDelay = delay }
        let guestPath = try Self.guestFile()
        defer { try? FileManager.default.removeItem(atPath: guestPath) }
        let slowAfterHandshake = Thread {
            // GET_CONFIG (24) is the handshake's last message: every later one is delayed.
            guard eventually(.seconds(10), { backend.requests(connection: 0).contains(24) }) else { return }
            backend.script.replyDelay = delay
        }
        if slowFrom == .start { slowAfterHandshake.start() }
        let start = ContinuousClock.now
        let result = try runIrqfd([
            "run", guestPath, "--vhost-user-blk", backend.socketPath, "--timeout", "\(timeout)",
        ])
        let elapsed = ContinuousClock.now - start
        print(
            "irqfd run --timeout \(timeout), every reply delayed \(delay) from the \(slowFrom): "
                + "exit \(result.status) after \(elapsed)")
        switch slowFrom {
        case .handshake:
            #expect(result.status == 124, "\(result.standardError)")
            #expect(result.standardError.contains("timed out after"), "\(result.standardError)")
        case .start:
            #expect(result.status == 0, "\(result.standardError)")
        }
        #expect(elapsed < .seconds(timeout + 1), "--timeout \(timeout) honoured within 1 s: \(elapsed)")
    }

    /// The virtio-blk driver guest in a file of its own, for `irqfd run`; the caller removes it.
    static func guestFile() throws -> String {
        let path = NSTemporaryDirectory() + "irqfd-slow-backend-guest-\(UUID().uuidString).bin"
        guard FileManager.default.createFile(atPath: path, contents: Data(GuestProgram.virtioBlk.image)) else {
            throw TestFailureReason("cannot create \(path)")
        }
        return path
    }

    /// `irqfd run --timeout 3` with a virtio-net or virtio-fs device whose
    /// backend delays every reply by 4.9 s: the handshake runs into the
    /// run's deadline, as virtio-blk's does, and the run exits 124 within the
    /// timeout and 1 s with a line naming the socket.
    @Test(arguments: [["--vhost-user-net"], ["--vhost-user-fs", "--tag", "slow"]])
    func irqfdRunHonoursItsTimeoutWhileANetOrFsBackendStallsItsHandshake(device: [String]) throws {
        let timeout = 3
        let backend = try ScriptedBlkBackend()
        backend.script.replyDelay = .milliseconds(4900)
        let guestPath = try Self.guestFile()
        defer { try? FileManager.default.removeItem(atPath: guestPath) }
        let start = ContinuousClock.now
        let arguments = ["run", guestPath, device[0], backend.socketPath] + device.dropFirst()
        let result = try runIrqfd(arguments + ["--timeout", "\(timeout)"])
        let elapsed = ContinuousClock.now - start
        print(
            "irqfd run \(device[0]) --timeout \(timeout), every reply delayed 4.9 s: exit \(result.status) after \(elapsed)"
        )
        #expect(result.status == 124, "\(result.standardError)")
        #expect(result.standardError.contains("timed out after"), "\(result.standardError)")
        #expect(elapsed < .seconds(timeout + 1), "--timeout \(timeout) honoured within 1 s: \(elapsed)")
    }

    /// After a reset whose reconnection failed (nobody listens), a
    /// queue_msix_vector write sends nothing and sets nothing: DRIVER_OK
    /// tries again, and succeeds once a backend listens.
    @Test func aVectorWriteAfterAFailedReconnectionLeavesItToDriverOK() throws {
        let first = try ScriptedBlkBackend()
        let path = first.socketPath
        let host = try CountingVM()
        let device = try VirtioBlkDevice.attach(to: host.vm, socketPath: path)
        var driver = PolledDriver.msixOnAfterReset(device)
        driver.configure()
        driver.driverOK()
        #expect(driver.started())
        first.stop()
        #expect(eventually { device.status & VirtioBlkDevice.Status.needsReset != 0 }, "the hang-up is noticed")
        let reset4 = driver.reset()
        #expect(reset4.done)
        #expect(eventually { device.lastBackendError != nil && !device.isBackendConnected })
        driver.configure()
        #expect(device.status == 0x0B, "the vector writes set no NEEDS_RESET: \(device.status)")
        let second = try ScriptedBlkBackend(at: path)
        driver.driverOK()
        #expect(driver.started())
        #expect(device.status == 0x0F, "DRIVER_OK reconnected: \(String(describing: device.lastBackendError))")
        #expect(device.isRunning(queue: 0))
        #expect(second.connectionCount == 1)
        let reset5 = driver.reset()
        #expect(reset5.done)
    }
}
#endif
