#if os(Linux)
import Foundation
import KVM
import TestSupport
import Testing
import TinyVM
import Virtio

/// A driver on the host, through the device's own MMIO entry points (the
/// same code a guest access reaches), for the loops a 1M-instruction/s guest
/// is too slow for. The VM is built but not run: the backend reads and
/// writes the rings in the shared memfd all the same.
struct HostDriver {
    let device: VirtioBlkDevice
    let memory: GuestMemory
    static let common = VirtioBlkDevice.virtioBase + VirtioBlkDevice.commonOffset
    static let ring: UInt64 = 0x20000
    static let size = 32
    var avail: UInt16 = 0

    func w(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        device.write(address: Self.common + offset, size: size, value: value)
    }
    func r(_ offset: UInt64, _ size: Int) -> UInt64 { device.read(address: Self.common + offset, size: size) }

    /// Virtio 1.2 section 3.1.1, VERSION_1 only, queue 0 of size 32 with no vector.
    mutating func initialise() -> Bool {
        guard resetAndNegotiateFeatures(read: r, write: w) else { return false }
        setUpQueue(0, size: Self.size, vector: 0xFFFF, at: Self.ring, write: w)
        // Fresh rings: a reset forgets the indices (SET_VRING_BASE 0).
        memory.load([UInt8](repeating: 0, count: 0x3000), at: Self.ring)
        avail = 0
        w(0x1C, 2, 1)
        w(0x14, 1, 0x0F)
        // The write returned at once; the device's worker starts the queue.
        device.waitUntilIdle()
        return r(0x14, 1) == 0x0F
    }

    /// Submits `count` 512-byte reads of sectors 0..<count and notifies.
    mutating func submitReads(_ count: Int) {
        for i in 0..<count {
            let header = Self.ring + 0x3000 + 16 * UInt64(i)
            memory.write64(0, at: header)  // type IN, reserved
            memory.write64(UInt64(i), at: header + 8)
            let status = Self.ring + 0x3800 + UInt64(i)
            memory.load([0xFF], at: status)
            let d = Self.ring + 16 * UInt64(3 * i)
            func desc(_ at: UInt64, _ addr: UInt64, _ len: UInt32, _ flags: UInt16, _ next: UInt16) {
                memory.write64(addr, at: at)
                memory.write64(UInt64(len) | UInt64(flags) << 32 | UInt64(next) << 48, at: at + 8)
            }
            desc(d, header, 16, 1, UInt16(3 * i + 1))
            desc(d + 16, 0x10_0000 + 512 * UInt64(i), 512, 3, UInt16(3 * i + 2))
            desc(d + 32, status, 1, 2, 0)
            let slot = Self.ring + 0x1004 + 2 * UInt64(Int(avail) % Self.size)
            let word = memory.read32(at: slot & ~3)
            let shift = (slot & 2) * 8
            memory.write32(word & ~(0xFFFF << shift) | UInt32(3 * i) << shift, at: slot & ~3)
            avail &+= 1
        }
        memory.write32(UInt32(avail) << 16, at: Self.ring + 0x1000)  // flags 0, idx
        device.write(address: VirtioBlkDevice.notifyAddress(queue: 0), size: 2, value: 0)
    }

    /// The used ring's idx.
    var used: UInt16 { UInt16(memory.read32(at: Self.ring + 0x2000) >> 16) }
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
