#if os(Linux)
import Foundation
import KVM
import MSIX
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

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
        func w(_ offset: UInt64, _ size: Int, _ value: UInt64) {
            device.write(address: Self.common + offset, size: size, value: value)
        }
        func r(_ offset: UInt64, _ size: Int) -> UInt64 { device.read(address: Self.common + offset, size: size) }
        w(0x14, 1, 0)
        acknowledgeAndAcceptFeatures(write: w)
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
        w(0x04, 4, 0xFFFF_FFFF)
        w(0x12, 2, 7)
        w(0x15, 1, 9)
        w(0x1E, 2, 5)
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
        device.waitUntilIdle()  // the start on the worker: what it sent is counted below
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
