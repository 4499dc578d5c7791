#if os(Linux)
import Foundation
import KVM
import MSIX
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

/// Issue 9's remaining tests: multi-queue, function mask and retargeting,
/// and bad guest values.
@Suite(needsKVM) struct MoreVirtioGuestTests {
    typealias L = VirtioBlkGuestLayout

    @Test(arguments: backends)
    func twoQueuesTwoVectorsEachVCPUTakesItsQueuesInterrupts(backend: DiskBackendKind) throws {
        // Queue 1's sectors start at 0x800.
        let image = try TestImage(sectors: 0x820) { UInt8(truncatingIfNeeded: $0 / 512 * 5 + $0 % 241) }
        let guest = try BlkGuest(backend, image: image, cpus: 2, queues: 2)
        guest.configure(batches: 4, perBatch: 4, first: 0, write: false, queues: 2, destinations: [0, 1])
        let outcome = guest.vm.run(timeout: .seconds(120))
        #expect(outcome == .exited(code: 0), "\(outcome); device \(guest.device.counters); backend error \(String(describing: guest.device.lastBackendError))")
        #expect(guest.completed == 32, "4 batches of 4 requests on each of 2 queues")
        #expect(guest.failed == 0)
        #expect(guest.device.counters.notifyExits == 0)
        #expect(guest.device.driverFeatures & VirtioBlkDevice.Feature.multiQueue != 0 || guest.device.queueCount == 2)
        // Queue 0 (MSI-X vector 1) to vCPU 0, queue 1 (vector 2) to vCPU 1, and never the other way.
        let seen = "cpu0 v1 \(guest.interrupts(cpu: 0, msix: 1)) v2 \(guest.interrupts(cpu: 0, msix: 2)); cpu1 v1 \(guest.interrupts(cpu: 1, msix: 1)) v2 \(guest.interrupts(cpu: 1, msix: 2)); route events \(guest.device.emulator.routeCount)"
        #expect(guest.interrupts(cpu: 0, msix: 1) >= 4, "at least one per batch: \(seen)")
        #expect(guest.interrupts(cpu: 1, msix: 2) >= 4, "at least one per batch: \(seen)")
        #expect(guest.interrupts(cpu: 1, msix: 1) == 0)
        #expect(guest.interrupts(cpu: 0, msix: 2) == 0)
        for q in 0..<2 {
            for j in 0..<16 {
                let got = guest.vm.memory.bytes(at: L.buffer(queue: q, request: j), count: 512)
                let want = try image.sector(L.sector(first: 0, queue: q, request: j))
                #expect(got == want, "queue \(q) request \(j)")
            }
        }
    }

    /// Table entry 1 (queue 0's vector) is at BAR1 + 16; the capability's
    /// Message Control at +2 has Function Mask in bit 14.
    @Test(arguments: backends)
    func functionMaskHoldsInThePBAThenRetargetingMovesTheInterruptsToTheOtherVCPU(backend: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64)
        let guest = try BlkGuest(backend, image: image, cpus: 2)
        guest.configure(batches: 3, perBatch: 3, first: 0, write: false, gated: true)
        guest.vm.start()
        defer { guest.vm.stop(); _ = guest.vm.wait() }
        let memory = guest.vm.memory
        let emulator = guest.device.emulator
        memory.write32(1, at: L.gate)
        #expect(guest.vm.waitUntil { memory.read32(at: L.batchesDone) == 1 })
        usleep(50_000)  // a late queue-start signal (qemu-storage-daemon sends one) lands first
        let messages = guest.device.frontend.messagesSent
        let afterBatch = guest.interrupts(cpu: 0, msix: 1)

        // Batch 2 under function mask.
        let control = emulator.messageControl
        #expect(control & 0x8000 != 0, "the guest enabled MSI-X")
        let capControl = VirtioBlkDevice.msixCapabilityOffset + 2
        guest.device.configWrite(offset: capControl, size: 2, value: UInt32(control | 0x4000))
        #expect(emulator.isFunctionMasked)
        memory.write32(2, at: L.gate)
        #expect(guest.vm.waitUntil { memory.read32(at: 0x22000) >> 16 == 6 }, "the backend completes batch 2")
        usleep(50_000)
        #expect(guest.interrupts(cpu: 0, msix: 1) == afterBatch, "no interrupt under function mask")
        #expect(emulator.read(bar: 1, offset: 0x800, size: 8) & 0b10 != 0, "PBA bit 1 set")
        guest.device.configWrite(offset: capControl, size: 2, value: UInt32(control & ~0x4000))
        #expect(!emulator.isFunctionMasked)
        #expect(guest.vm.waitUntil { guest.interrupts(cpu: 0, msix: 1) == afterBatch + 1 })
        #expect(guest.vm.waitUntil { guest.completed == 6 }, "the guest woke and saw batch 2")
        usleep(50_000)
        #expect(guest.interrupts(cpu: 0, msix: 1) == afterBatch + 1, "exactly one on unmask")
        #expect(emulator.read(bar: 1, offset: 0x800, size: 8) & 0b10 == 0, "PBA bit 1 clear")
        #expect(guest.device.frontend.messagesSent == messages, "no vhost-user message for function mask/unmask")

        // Retarget vector 1 to APIC ID 1 (masked while its address changes,
        // as PCI 3.0 section 6.8.2.9 asks), and tell the guest to poll.
        let onCPU0 = guest.interrupts(cpu: 0, msix: 1)
        #expect(guest.interrupts(cpu: 1, msix: 1) == 0)
        emulator.write(bar: 1, offset: 16 + 12, size: 4, value: 1)
        emulator.write(bar: 1, offset: 16, size: 4, value: 0xFEE0_0000 | 1 << 12)
        emulator.write(bar: 1, offset: 16 + 12, size: 4, value: 0)
        memory.write32(1, at: L.destination(queue: 0))
        memory.write32(3, at: L.gate)
        let outcome = guest.vm.wait(timeout: .seconds(60))
        #expect(outcome == .exited(code: 0), "\(outcome); device \(guest.device.counters)")
        #expect(guest.completed == 9)
        #expect(guest.failed == 0)
        #expect(guest.interrupts(cpu: 1, msix: 1) >= 1, "batch 3's interrupts on vCPU 1")
        #expect(guest.interrupts(cpu: 0, msix: 1) == onCPU0, "and none on vCPU 0")
        #expect(guest.device.frontend.messagesSent == messages, "no vhost-user message for retargeting either")
    }
}

@Suite(needsKVM) struct VirtioBadGuestValueTests {
    static let common = VirtioBlkDevice.virtioBase + VirtioBlkDevice.commonOffset

    /// Virtio 1.2 sections 4.1.4.3 and 2.7: each bad value is ignored and
    /// counted, the device keeps working, and rings outside RAM never reach
    /// the backend (the queue does not start).
    @Test(arguments: backends)
    func badGuestValuesAreCountedAndTheDeviceStillWorks(backend kind: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64)
        let backend = try BlockBackend(kind: kind, image: image.path)
        let vm = try TinyVM()
        let device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath)
        func w(_ offset: UInt64, _ size: Int, _ value: UInt64) { device.write(address: Self.common + offset, size: size, value: value) }
        func r(_ offset: UInt64, _ size: Int) -> UInt64 { device.read(address: Self.common + offset, size: size) }
        w(0x14, 1, 0); w(0x14, 1, 1); w(0x14, 1, 3)
        w(0x08, 4, 0); w(0x0C, 4, 0)
        w(0x08, 4, 1); w(0x0C, 4, 1)
        w(0x14, 1, 0x0B)
        #expect(r(0x14, 1) & 8 != 0)
        w(0x16, 2, 0)
        let before = device.counters

        // Queue sizes: not a power of two, above the maximum, zero.
        for bad: UInt64 in [300, 3, 512, 0] { w(0x18, 2, bad) }
        #expect(device.counters.badQueueSizes == before.badQueueSizes + 4)
        #expect(r(0x18, 2) == UInt64(VirtioBlkDevice.maxQueueSize), "the size keeps its value")
        w(0x18, 2, 32)
        #expect(r(0x18, 2) == 32)

        // Read-only fields: device_feature, num_queues, config_generation, queue_notify_off, ISR, device config.
        let numQueues = r(0x12, 2)
        w(0x04, 4, 0xFFFF_FFFF); w(0x12, 2, 7); w(0x15, 1, 9); w(0x1E, 2, 5)
        device.write(address: VirtioBlkDevice.virtioBase + VirtioBlkDevice.isrOffset, size: 1, value: 1)
        let capacity = device.read(address: VirtioBlkDevice.virtioBase + VirtioBlkDevice.deviceOffset, size: 4)
        device.write(address: VirtioBlkDevice.virtioBase + VirtioBlkDevice.deviceOffset, size: 4, value: 0x1234)
        #expect(device.counters.readOnlyWrites == before.readOnlyWrites + 6)
        #expect(r(0x12, 2) == numQueues)
        #expect(device.read(address: VirtioBlkDevice.virtioBase + VirtioBlkDevice.deviceOffset, size: 4) == capacity)
        #expect(capacity == 64, "capacity in sectors")

        // Notifies for a queue that does not exist, and with the wrong index.
        w(0x1A, 2, 0xFFFF)
        device.write(address: VirtioBlkDevice.notifyAddress(queue: 5), size: 2, value: 5)
        device.write(address: VirtioBlkDevice.notifyAddress(queue: 0), size: 2, value: 3)
        #expect(device.counters.badNotifies == before.badNotifies + 2)

        // Rings outside RAM: the queue never starts on the backend.
        let outside = UInt64(vm.memory.size) - 0x100
        w(0x20, 8, outside)
        w(0x28, 8, 0x21000)
        w(0x30, 8, 0x22000)
        w(0x1C, 2, 1)
        let messages = device.frontend.messagesSent
        w(0x14, 1, 0x0F)
        #expect(device.counters.badRingAddresses == before.badRingAddresses + 1)
        #expect(!device.isRunning(queue: 0), "rings outside RAM never reach the backend")
        // What a start with queue 0 would send beyond SET_FEATURES and
        // SET_MEM_TABLE (NUM/ADDR/BASE/KICK/CALL/ENABLE) was not sent.
        #expect(device.frontend.messagesSent - messages < 6, "\(device.frontend.messagesSent - messages) messages")
        #expect(device.counters.backendFailures == 0)

        // And the device still works: reset, a good initialisation, requests.
        device.writeStatus(0)
        var driver = HostDriver(device: device, memory: vm.memory)
        let ok = driver.initialise()
        #expect(ok)
        #expect(device.isRunning(queue: 0))
        driver.submitReads(4)
        let deadline = ContinuousClock.now + .seconds(10)
        while driver.used != 4, ContinuousClock.now < deadline { usleep(1000) }
        #expect(driver.used == 4)
        for i in 0..<4 { #expect(vm.memory.bytes(at: HostDriver.ring + 0x3800 + UInt64(i), count: 1) == [0]) }
        #expect(device.counters.backendFailures == 0)
        device.writeStatus(0)
    }
}
#endif

#if os(Linux)
@Suite(needsKVM) struct VirtioDescriptorTests {
    /// Start, I/O, reset, release, twenty times: each device's own kick and
    /// call eventfds and its vhost-user socket are closed afterwards, and the
    /// VM's free GSIs are as they were.
    @Test(arguments: backends)
    func deviceLifecyclesCloseTheDescriptorsTheyOpened(backend kind: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64)
        let vm = try TinyVM()
        let free = vm.irqfd.freeGsiCount
        let backend = try BlockBackend(kind: kind, image: image.path)
        for round in 0..<20 {
            var owned: [OwnedDescriptor] = []
            do {
                let device = try hostLifecycle(vm: vm, socketPath: backend.socketPath, round: round)
                let socket = try #require(device.frontend.socketDescriptor)
                owned = ([socket] + device.ownedDescriptors).map(OwnedDescriptor.init)
                #expect(owned.count == 3)
                let allOpen = owned.allSatisfy { $0.identity != "closed" && $0.isOpen }
                #expect(allOpen, "round \(round): open while the device lives")
            }
            // The device's deinit closes them: here, or on its watcher thread just
            // after if that thread held the device at this moment (it does for the
            // length of one call): allow 2 s. The records pin each eventfd, so a
            // new eventfd on a freed number cannot pass for it.
            _ = eventually(.seconds(2)) { !owned.contains(where: \.isOpen) }
            for d in owned { #expect(!d.isOpen, "round \(round): descriptor \(d.fd) still open 2 s after release") }
            usleep(2000)  // qemu-storage-daemon notices the closed connection
        }
        #expect(vm.irqfd.freeGsiCount == free)
    }
}
#endif

#if os(Linux)
/// `irqfd run GUEST.bin --disk IMAGE --disk-backend KIND` through the built
/// command. The run has no way to set the driver guest's parameters (they
/// are below its load address), so the guest runs 0 batches: it walks the
/// capability list, negotiates VERSION_1, sets up its queue and sets
/// DRIVER_OK through the backend the command started, and exits 0 (2, 3 or
/// 4 name the step that failed).
@Suite(needsKVM) struct VirtioRunCommandTests {
    @Test(arguments: backends)
    func irqfdRunWithADiskStartsTheBackendAndTheDriverGuestInitialisesTheDevice(backend: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64) { UInt8(truncatingIfNeeded: $0 % 253) }
        let before = try image.sector(5)
        let guestPath = NSTemporaryDirectory() + "irqfd-virtio-guest-\(UUID().uuidString).bin"
        guard FileManager.default.createFile(atPath: guestPath, contents: Data(GuestProgram.virtioBlk.image)) else {
            throw TestFailure("cannot create \(guestPath)")
        }
        defer { try? FileManager.default.removeItem(atPath: guestPath) }
        let (status, stdout, stderr) = try runProcess(
            try builtExecutable("irqfd"), ["run", guestPath, "--disk", image.path, "--disk-backend", backend.rawValue])
        #expect(status == 0, "exit \(status):\n\(stdout)\(stderr)")
        #expect(stderr.contains("virtio-blk 00:02.0 served by \(backend)"), "\(stderr)")
        #expect(try image.sector(5) == before, "a run of 0 batches leaves the image as it was")
    }
}
#endif
