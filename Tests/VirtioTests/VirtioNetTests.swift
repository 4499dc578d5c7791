#if os(Linux)
import Foundation
import Glibc
import KVM
import MSIX
import PCI
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

/// Tests that need dpdk-testpmd run where it is installed and say why they skip where it is not.
let testpmdInstalled = Testing.ConditionTrait.enabled(
    if: NetBackend.isTestpmdInstalled, "skipped: dpdk-testpmd is not installed (apt-get install dpdk-dev)")

/// A VM with the virtio-net device served by a testpmd of its own, loaded with the net driver guest.
final class NetGuest {
    let backend: NetBackend
    let vm: TinyVM
    let device: VirtioNetDevice
    typealias L = VirtioNetGuestLayout

    init(
        cpus: Int = 1, queuePairs: Int = 1, delivery: InterruptDelivery = .irqfd, coalescesCommits: Bool = false
    ) throws {
        backend = try NetBackend(queuePairs: queuePairs)
        vm = try TinyVM(.init(cpus: cpus, coalescesCommits: coalescesCommits))
        device = try VirtioNetDevice.attach(
            to: vm, socketPath: backend.socketPath, queuePairs: queuePairs, delivery: delivery)
        try vm.load(GuestProgram.virtioNet.image)
    }

    deinit {
        device.disconnect()
        backend.stop()
    }

    func configure(frames: Int, pairs: Int = 1, destinations: [Int] = [0, 0], gated: Bool = false) {
        let m = vm.memory
        m.write32(UInt32(frames), at: L.frames)
        m.write32(UInt32(pairs), at: L.pairs)
        m.write32(UInt32(destinations[0]), at: L.destination(pair: 0))
        m.write32(UInt32(destinations[1]), at: L.destination(pair: 1))
        m.write32(gated ? 1 : 0, at: L.gated)
    }

    func intact(pair p: Int) -> Int { Int(vm.memory.read32(at: L.intact(pair: p))) }
    var damaged: Int { Int(vm.memory.read32(at: L.damaged)) }
    var sent: Int { Int(vm.memory.read32(at: L.sent)) }
    var mac: [UInt8] { vm.memory.bytes(at: L.mac, count: 6) }
    func interrupts(cpu: Int, msix v: Int) -> Int {
        Int(vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: L.idtVector(msix: v))))
    }
    /// Runs the guest to its end (up to `timeout`) with its first frame held
    /// until testpmd's link is up (`TestpmdProcess.isLinkUp`): the guest
    /// initialises the device and waits at the gate, which opens for every
    /// frame once testpmd can carry them. Only for a guest `configure`d ungated.
    func run(timeout: Duration = .seconds(60)) -> Outcome {
        _ = vm.startNetGuest(afterLinkUp: { backend.process.waitUntilLinkUp(timeout: .seconds(30)) })
        let outcome = vm.wait(timeout: timeout)
        if outcome != .exited(code: 0) {
            stoppedState = vcpuStates
            // testpmd prints its forward statistics (frames taken, sent, dropped) as it exits: into the diagnosis.
            backend.process.stop()
        }
        return outcome
    }

    /// Each vCPU's mp state and the local APIC's IRR and ISR bits for the
    /// guest's vectors 0x40...0x5F (KVM_GET_LAPIC: only once the run has
    /// ended, as a vCPU ioctl waits for KVM_RUN to return).
    private var vcpuStates: String {
        vm.vcpus.enumerated().map { i, vcpu in
            guard let apic = try? vcpu.localAPIC(), let mp = try? vcpu.mpState() else { return "vCPU \(i) unreadable" }
            func word(_ offset: Int) -> UInt32 {
                apic[offset..<offset + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) }
            }
            let irr = String(word(0x220), radix: 16)
            let isr = String(word(0x120), radix: 16)
            return "vCPU \(i) mp state \(mp) IRR[0x40...] \(irr) ISR[0x40...] \(isr)"
        }.joined(separator: ", ")
    }
    /// ``vcpuStates`` when a ``run(timeout:)`` did not end in exit 0.
    private var stoppedState = ""

    /// Each queue's driver-area and device-area idx (avail/used), as the guest sees them.
    var rings: String {
        (0..<5).map { q in
            let rings = 0x20000 + 0x10000 * UInt64(q)
            return
                "q\(q) avail \(vm.memory.read32(at: rings + 0x1000) >> 16) used \(vm.memory.read32(at: rings + 0x2000) >> 16)"
        }.joined(separator: ", ")
    }

    /// The MSI-X emulator's view of each vector: live (routed and unmasked), pending, and its counters.
    var vectors: String {
        let e = device.emulator
        let each = (0..<6).map { v in "v\(v) live \(e.isLive(v)) pending \(e.isPending(v))" }.joined(separator: ", ")
        return "\(each); msix \(e.counters); last route error \(String(describing: e.lastRouteError))"
    }

    /// What went wrong, for a failed expectation.
    var diagnosis: String {
        "device \(device.counters); status \(device.status); rings \(rings); sent \(sent); vectors \(vectors); "
            + "\(stoppedState); "
            + "backend error \(String(describing: device.lastBackendError)); testpmd log:\n\(backend.log.suffix(8000))"
    }
}

/// Every virtio-net suite, nested here: testpmd busy-polls a core, so the
/// suites run one after another (a trait of the parent holds for its nested
/// suites) and each test's testpmd is the only one this run keeps.
@Suite(needsKVM, testpmdInstalled, .serialized) struct VirtioNetTests {}

extension VirtioNetTests {
    @Suite struct GuestTests {
        @Test func aHundredFramesOfSixtyToFifteenFourteenBytesComeBackIntactEachTakenInTheInterruptHandler() throws {
            let guest = try NetGuest()
            guest.configure(frames: 100)
            let before = guest.vm.vm.counters.snapshot
            let outcome = guest.run(timeout: .seconds(60))
            #expect(outcome == .exited(code: 0), "\(outcome); \(guest.diagnosis)")
            #expect(guest.sent == 100)
            #expect(guest.intact(pair: 0) == 100, "\(guest.diagnosis)")
            #expect(guest.damaged == 0)
            #expect(guest.mac == VirtioNet.defaultMAC)
            #expect(guest.interrupts(cpu: 0, msix: 1) >= 1, "receive completions came as interrupts")
            #expect(guest.device.driverFeatures == VirtioFeature.version1 | VirtioNet.Feature.mac)
            #expect(guest.device.counters.notifyExits == 0)
            #expect((guest.vm.vm.counters.snapshot - before).signalMsis == 0, "irqfd delivery made no injection")
        }

        @Test func twoPairsEnabledThroughTheControlQueueEachDeliverOnlyToTheirOwnVCPU() throws {
            let guest = try NetGuest(cpus: 2, queuePairs: 2)
            guest.configure(frames: 12, pairs: 2, destinations: [0, 1])
            let before = guest.vm.vm.counters.snapshot
            let outcome = guest.run(timeout: .seconds(60))
            #expect(outcome == .exited(code: 0), "\(outcome); \(guest.diagnosis)")
            #expect(guest.vm.memory.read32(at: VirtioNetGuestLayout.controlAck) == UInt32(VirtioNet.Control.ok))
            #expect(guest.intact(pair: 0) == 12 && guest.intact(pair: 1) == 12, "\(guest.diagnosis)")
            #expect(guest.damaged == 0)
            let f = VirtioNet.Feature.self
            #expect(guest.device.driverFeatures == VirtioFeature.version1 | f.mac | f.multiQueue | f.controlQueue)
            // The control queue's completion came through its own vector (queue 4: MSI-X 5) on vCPU 0.
            #expect(guest.interrupts(cpu: 0, msix: 5) == 1)
            #expect(guest.interrupts(cpu: 1, msix: 5) == 0)
            for v in [1, 2] {
                #expect(guest.interrupts(cpu: 1, msix: v) == 0, "pair 0's vector \(v) never reaches vCPU 1")
            }
            for v in [3, 4] {
                #expect(guest.interrupts(cpu: 0, msix: v) == 0, "pair 1's vector \(v) never reaches vCPU 0")
            }
            #expect(guest.interrupts(cpu: 0, msix: 1) >= 1)
            #expect(guest.interrupts(cpu: 1, msix: 3) >= 1)
            #expect(guest.device.counters.notifyExits == 0)
            #expect((guest.vm.vm.counters.snapshot - before).signalMsis == 0, "irqfd delivery made no injection")
        }

        @Test func aMaskedReceiveVectorHoldsTheCompletionInThePBAAndUnmaskDeliversExactlyOne() throws {
            let guest = try NetGuest()
            // Frame 2 is never let through: the guest waits at the gate with interrupts on.
            guest.configure(frames: 3, gated: true)
            guest.vm.start()
            defer {
                guest.vm.stop()
                _ = guest.vm.wait()
            }
            typealias L = VirtioNetGuestLayout
            #expect(guest.backend.process.waitUntilLinkUp(timeout: .seconds(30)), "\(guest.diagnosis)")
            guest.vm.memory.write32(1, at: L.gate)
            #expect(guest.vm.waitUntil(timeout: .seconds(60)) { guest.intact(pair: 0) == 1 }, "\(guest.diagnosis)")
            let emulator = guest.device.emulator
            let messages = guest.device.frontend.messagesSent
            usleep(50_000)
            let afterFirst = guest.interrupts(cpu: 0, msix: 1)
            // The receive queue's vector is 1: mask it (vector control, BAR1 + 16 + 12).
            emulator.write(bar: 1, offset: 16 + 12, size: 4, value: 1)
            guest.vm.memory.write32(2, at: L.gate)
            // Receive queue 0's used idx reaches 2: testpmd sent frame 1 back, and the guest has not heard.
            #expect(
                guest.vm.waitUntil(timeout: .seconds(30)) {
                    guest.vm.memory.read32(at: L.usedRing(queue: 0)) >> 16 == 2
                },
                "testpmd loops frame 1 back")
            usleep(50_000)
            #expect(guest.interrupts(cpu: 0, msix: 1) == afterFirst, "no interrupt while masked")
            #expect(guest.intact(pair: 0) == 1, "the handler has not run")
            #expect(emulator.read(bar: 1, offset: 0x800, size: 8) & 0b10 != 0, "PBA bit 1 set")
            emulator.write(bar: 1, offset: 16 + 12, size: 4, value: 0)
            #expect(guest.vm.waitUntil { guest.interrupts(cpu: 0, msix: 1) == afterFirst + 1 })
            #expect(
                guest.vm.waitUntil(timeout: .seconds(30)) { guest.intact(pair: 0) == 2 }, "the handler took frame 1")
            usleep(50_000)
            #expect(guest.interrupts(cpu: 0, msix: 1) == afterFirst + 1, "exactly one")
            #expect(emulator.read(bar: 1, offset: 0x800, size: 8) & 0b10 == 0, "PBA bit 1 clear after delivery")
            #expect(guest.device.frontend.messagesSent == messages, "no vhost-user message for mask/unmask")
        }

        @Test func batchesOfThirtyTwoComeBackIntactAndStampedRunsRecordEveryFrame() throws {
            let guest = try NetGuest()
            guest.configure(frames: 96)
            typealias L = VirtioNetGuestLayout
            guest.vm.memory.write32(32, at: L.batch)
            guest.vm.memory.write32(1, at: L.stamp)
            guest.vm.memory.write32(60, at: L.length)
            let outcome = guest.run(timeout: .seconds(60))
            #expect(outcome == .exited(code: 0), "\(outcome); \(guest.diagnosis)")
            #expect(guest.intact(pair: 0) == 96 && guest.damaged == 0)
            let samples = (0..<96).map { guest.vm.memory.read32(at: L.sample($0)) }
            #expect(samples.allSatisfy { $0 > 0 }, "a notify -> handler time for every frame")
            #expect(guest.vm.memory.read64(at: L.tscEnd) > guest.vm.memory.read64(at: L.tscStart))
        }

        /// What a guest saw, for comparing delivery modes.
        struct Seen: Equatable {
            var exit: Outcome
            var sent: Int
            var intact: [Int]
            var damaged: Int
            var ack: UInt32
            var controlInterrupts: Int
        }

        func run(_ delivery: InterruptDelivery) throws -> Seen {
            let guest = try NetGuest(cpus: 2, queuePairs: 2, delivery: delivery)
            guest.configure(frames: 8, pairs: 2, destinations: [0, 1])
            let outcome = guest.run(timeout: .seconds(60))
            #expect(outcome == .exited(code: 0), "\(delivery): \(outcome); \(guest.diagnosis)")
            #expect(guest.device.counters.notifyExits == 0, "\(delivery)")
            return Seen(
                exit: outcome, sent: guest.sent, intact: [guest.intact(pair: 0), guest.intact(pair: 1)],
                damaged: guest.damaged, ack: guest.vm.memory.read32(at: VirtioNetGuestLayout.controlAck),
                controlInterrupts: guest.interrupts(cpu: 0, msix: 5))
        }

        @Test func testpmdExitsAtEndOfItsInputAndLeavesNothingBehind() throws {
            let backend = try NetBackend(queuePairs: 2)
            let testpmd = backend.process
            let pid = testpmd.processIdentifier
            #expect(kill(pid, 0) == 0)
            #expect(FileManager.default.fileExists(atPath: "/var/run/dpdk/\(testpmd.filePrefix)"))
            testpmd.endInput()
            #expect(eventually(.seconds(20)) { !testpmd.isRunning }, "end of input alone ends it: no signal")
            #expect(testpmd.exitStatus == 0)
            backend.stop()
            #expect(kill(pid, 0) == -1 && errno == ESRCH)
            #expect(
                !FileManager.default.fileExists(atPath: "/var/run/dpdk/\(testpmd.filePrefix)"), "DPDK's run-time files")
            #expect(!FileManager.default.fileExists(atPath: backend.socketPath))
        }

        /// What `TestpmdProcess.isLinkUp` reads from testpmd's log follows the
        /// device: down before DRIVER_OK, up after it, down again once a reset
        /// has stopped the rings (GET_VRING_BASE), up after the next DRIVER_OK.
        @Test func testpmdsLinkIsUpFromDriverOKUntilAReset() throws {
            let rig = try HostNet(queuePairs: 1)
            defer { rig.close() }
            let testpmd = rig.backend.process
            #expect(!testpmd.isLinkUp, "no driver yet")
            #expect(rig.driver.initialise(features: 1 << 5))
            #expect(testpmd.waitUntilLinkUp(), "\(rig.backend.log.suffix(800))")
            rig.device.writeStatus(0)
            #expect(rig.device.status == 0)
            #expect(!testpmd.isLinkUp, "the reset's GET_VRING_BASE stopped the device: \(rig.backend.log.suffix(800))")
            #expect(rig.driver.initialise(features: 1 << 5))
            #expect(testpmd.waitUntilLinkUp(), "\(rig.backend.log.suffix(800))")
        }

        /// `irqfd run GUEST.bin --testpmd --queues 2`: the parameters the guest
        /// reads are below its load address, so it sends 0 frames: it walks the
        /// capabilities, negotiates, sets up both pairs' queues and DRIVER_OK, and
        /// exits 0 (2, 3 or 4 name the step that failed). testpmd is gone afterwards.
        @Test func irqfdRunWithTestpmdStartsItInitialisesTheDeviceAndStopsItAtExit() throws {
            let guestPath = NSTemporaryDirectory() + "irqfd-virtio-net-\(UUID().uuidString).bin"
            guard FileManager.default.createFile(atPath: guestPath, contents: Data(GuestProgram.virtioNet.image)) else {
                throw TestFailure("cannot create \(guestPath)")
            }
            defer { try? FileManager.default.removeItem(atPath: guestPath) }
            let (status, stdout, stderr) = try runProcess(
                try builtExecutable("irqfd"),
                ["run", guestPath, "--testpmd", "--queues", "2", "--mac", "52:54:00:ab:cd:ef"])
            #expect(status == 0, "exit \(status):\n\(stdout)\(stderr)")
            let line = stderr.split(separator: "\n").first { $0.contains("virtio-net 00:02.0 served by dpdk-testpmd") }
            #expect(line?.contains("2 queue pairs") == true, "\(stderr)")
            let pid = line.flatMap { $0.split(separator: "pid ").last?.split(separator: ",").first }.flatMap {
                Int32($0)
            }
            #expect(pid != nil, "\(stderr)")
            if let pid { #expect(kill(pid, 0) == -1 && errno == ESRCH, "testpmd \(pid) outlived irqfd run") }
        }

        @Test func everyDeliveryModeGivesTheGuestTheSameResults() throws {
            let irqfd = try run(.irqfd)
            let expected = Seen(
                exit: .exited(code: 0), sent: 16, intact: [8, 8], damaged: 0, ack: 0, controlInterrupts: 1)
            #expect(irqfd == expected)
            #expect(try run(.relay) == irqfd)
            #expect(try run(.userspace) == irqfd)
        }
    }
}
#endif
