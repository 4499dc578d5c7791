#if os(Linux)
import Foundation
import KVM
import KVMTestSupport
import TestSupport
import Testing
import TinyVM
import Virtio

typealias HostDriver = BlkHostDriver

extension BlkHostDriver {
    /// Virtio 1.2 section 3.1.1, VERSION_1 only, queue 0 of size 32 with no vector.
    mutating func initialise() -> Bool {
        avail = 0
        return device.bringUp(queues: [HostQueue(0, size: Self.size, vector: 0xFFFF, ring: Self.ring)], memory: memory)
    }
}

@Suite(needsKVM, qsdInstalled) struct VirtioResetTests {
    @Test func resetWithRequestsInFlightThenReinitialiseAHundredTimes() throws {
        let image = try TestImage(sectors: 64)
        let backend = try BlockBackend(kind: .qemuStorageDaemon, image: image.path)
        let vm = try TinyVM()
        let device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath)
        var driver = HostDriver(device: device, memory: vm.memory)
        for round in 0..<100 {
            let ok = driver.initialise()
            #expect(ok, "round \(round): DRIVER_OK")
            driver.submitReads(8)
            device.writeStatus(0)  // requests in flight
            #expect(
                device.status == 0,
                "round \(round): reset, not NEEDS_RESET (\(String(describing: device.lastBackendError)))")
            #expect(!device.isRunning(queue: 0))
        }
        // And a last initialisation that completes its requests.
        let ok = driver.initialise()
        #expect(ok)
        driver.submitReads(8)
        let deadline = ContinuousClock.now + .seconds(10)
        while driver.used != 8, ContinuousClock.now < deadline { usleep(1000) }
        #expect(driver.used == 8)
        for i in 0..<8 { #expect(vm.memory.bytes(at: HostDriver.ring + 0x3800 + UInt64(i), count: 1) == [0]) }
        #expect(device.resetCount == 100)
        #expect(device.counters.backendFailures == 0)
        device.writeStatus(0)
    }

    @Test func aHundredLifecyclesLeaveTheVMsGSIsAsTheyWere() throws {
        let image = try TestImage(sectors: 64)
        let vm = try TinyVM()
        let free = vm.irqfd.freeGsiCount
        let backend = try BlockBackend(kind: .qemuStorageDaemon, image: image.path)
        for round in 0..<100 {
            // qemu-storage-daemon serves one connection at a time: each device
            // connects, runs I/O, resets and goes away before the next.
            do {
                _ = try hostLifecycle(vm: vm, socketPath: backend.socketPath, round: round)
            }
            usleep(2000)  // qemu-storage-daemon notices the closed connection
        }
        #expect(vm.irqfd.freeGsiCount == free)
    }
}

/// One device lifecycle driven from the host, as the lifecycle tests repeat
/// it: a device on `socketPath`, memory decoding and bus mastering on, the
/// driver initialised, queue 0 given a route (MSI-X table entry 1, vector
/// 0x41), two reads completed, then a reset. Returns the device, still alive,
/// for the caller's own checks.
func hostLifecycle(vm: TinyVM, socketPath: String, round: Int) throws -> VirtioBlkDevice {
    let device = try VirtioBlkDevice(vm: vm, socketPath: socketPath)
    var driver = HostDriver(device: device, memory: vm.memory)
    device.configWrite(offset: 0x04, size: 2, value: 6)
    let ok = driver.initialise()
    #expect(ok, "round \(round)")
    device.write(address: VirtioBlkDevice.msixBase + 16, size: 4, value: 0xFEE0_0000)
    device.write(address: VirtioBlkDevice.msixBase + 24, size: 4, value: 0x41)
    _ = try device.emulator.event(for: 1)
    driver.submitReads(2)
    let deadline = ContinuousClock.now + .seconds(10)
    while driver.used != 2, ContinuousClock.now < deadline { usleep(500) }
    #expect(driver.used == 2, "round \(round)")
    device.writeStatus(0)
    return device
}
#endif
