#if os(Linux)
import Foundation
import Glibc
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

/// Frames through pair `pair` from the host, with a ``NetHostDriver`` that
/// has initialised the device: receive buffers posted on queue 2p, frames
/// sent on queue 2p + 1 (one descriptor: the 12-byte header and the frame),
/// and what testpmd loops back read from queue 2p's used ring.
final class NetFrameDriver {
    let driver: NetHostDriver
    let pair: Int
    var memory: GuestMemory { driver.memory }
    var receiveQueue: Int { 2 * pair }
    var transmitQueue: Int { 2 * pair + 1 }
    var receiveBuffers: UInt64 { 0x10_0000 + 0x4_0000 * UInt64(pair) }
    var transmitBuffers: UInt64 { 0x18_0000 + 0x4_0000 * UInt64(pair) }
    var transmitAvailable: UInt16 = 0
    var receiveAvailable: UInt16 = 0
    var receiveUsed: UInt16 = 0

    init(_ driver: NetHostDriver, pair: Int = 0) {
        self.driver = driver
        self.pair = pair
    }

    private func descriptor(queue q: Int, _ i: Int, address: UInt64, length: UInt32, flags: UInt16) {
        let at = NetHostDriver.ring(q) + 16 * UInt64(i)
        memory.write64(address, at: at)
        memory.write64(UInt64(length) | UInt64(flags) << 32, at: at + 8)
    }

    private func publish(queue q: Int, head: UInt16, index: inout UInt16) {
        let ring = NetHostDriver.ring(q)
        memory.store(head, at: ring + 0x1004 + 2 * UInt64(index % NetHostDriver.size))
        index &+= 1
        memory.store(index, at: ring + 0x1002)
    }

    private func notify(_ q: Int) {
        driver.device.write(address: VirtioNetDevice.notifyAddress(queue: q), size: 2, value: UInt64(q))
    }

    /// Posts every descriptor of queue 0 as a 2 KiB receive buffer.
    func postReceiveBuffers() {
        transmitAvailable = 0
        receiveAvailable = 0
        receiveUsed = 0
        for d in 0..<Int(NetHostDriver.size) {
            descriptor(queue: receiveQueue, d, address: receiveBuffers + 0x800 * UInt64(d), length: 0x800, flags: 2)
            publish(queue: receiveQueue, head: UInt16(d), index: &receiveAvailable)
        }
        notify(receiveQueue)
    }

    /// Sends `frame` on queue 1 without waiting.
    func send(_ frame: [UInt8]) {
        let slot = Int(transmitAvailable % NetHostDriver.size)
        let buffer = transmitBuffers + 0x800 * UInt64(slot)
        memory.load([UInt8](repeating: 0, count: 12) + frame, at: buffer)
        descriptor(queue: transmitQueue, slot, address: buffer, length: UInt32(12 + frame.count), flags: 0)
        publish(queue: transmitQueue, head: UInt16(slot), index: &transmitAvailable)
        notify(transmitQueue)
    }

    /// The next frame back on queue 0 (its buffer posted again), or nil within `timeout`.
    func receive(timeout: Duration = .seconds(10)) -> [UInt8]? {
        let ring = NetHostDriver.ring(receiveQueue)
        let seen = receiveUsed
        guard eventually(timeout, { memory.load(UInt16.self, at: ring + 0x2002) != seen }) else { return nil }
        let element = ring + 0x2004 + 8 * UInt64(receiveUsed % NetHostDriver.size)
        let id = memory.load(UInt32.self, at: element)
        let length = Int(memory.load(UInt32.self, at: element + 4))
        receiveUsed &+= 1
        guard id < UInt32(NetHostDriver.size), length >= 12, length <= 0x800 else { return [] }
        let frame = memory.bytes(at: receiveBuffers + 0x800 * UInt64(id) + 12, count: length - 12)
        publish(queue: receiveQueue, head: UInt16(id), index: &receiveAvailable)
        notify(receiveQueue)
        return frame
    }
}

/// A recognisable frame of `length` bytes.
func netFrame(_ n: Int, length: Int) -> [UInt8] { (0..<length).map { UInt8(truncatingIfNeeded: n &* 31 &+ $0 &* 7) } }

/// What holds for virtio-blk holds for virtio-net on testpmd: resets with
/// frames in flight, a backend killed under the device, lifecycles that
/// leave nothing behind, and a guest's random accesses.
extension VirtioNetTests {
    @Suite struct ReliabilityTests {
        /// MAC only (one pair in use).
        static let macOnly: UInt32 = 1 << 5

        @Test func aHundredResetsWithFramesInFlightThenFramesStillComeBackIntact() throws {
            let rig = try HostNet(queuePairs: 1)
            defer { rig.close() }
            let (backend, device, driver) = (rig.backend, rig.device, rig.driver)
            let frames = NetFrameDriver(driver)
            for round in 0..<100 {
                #expect(driver.initialise(features: Self.macOnly), "round \(round): status \(device.status)")
                frames.postReceiveBuffers()
                for n in 0..<6 { frames.send(netFrame(n, length: 60 + 97 * n)) }
                device.writeStatus(0)
                #expect(device.status == 0, "round \(round)")
            }
            #expect(device.resetCount == 100)
            #expect(device.counters.backendFailures == 0, "\(String(describing: device.lastBackendError))")
            #expect(driver.initialise(features: Self.macOnly))
            #expect(rig.waitUntilLinkUp(), "\(backend.log.suffix(800))")
            frames.postReceiveBuffers()
            for n in 0..<8 {
                let frame = netFrame(n, length: 60 + 181 * n)
                frames.send(frame)
                #expect(frames.receive() == frame, "frame \(n) after 100 resets; \(backend.log.suffix(600))")
            }
            #expect(backend.isRunning)
        }

        @Test func aKilledTestpmdGivesNeedsResetAndTheConfigInterruptAndAResetReconnects() throws {
            let rig = try HostNet(queuePairs: 1)
            defer { rig.close() }
            let (backend, device, driver) = (rig.backend, rig.device, rig.driver)
            let frames = NetFrameDriver(driver)
            #expect(driver.initialise(features: Self.macOnly))
            driver.w(0x10, 2, 0)  // msix_config = 0
            #expect(rig.waitUntilLinkUp(), "\(backend.log.suffix(800))")
            frames.postReceiveBuffers()
            frames.send(netFrame(1, length: 100))
            #expect(frames.receive() == netFrame(1, length: 100))

            backend.process.kill()
            #expect(eventually { device.status & VirtioStatus.needsReset != 0 }, "DEVICE_NEEDS_RESET")
            // MSI-X is off, so the configuration interrupt latched: PBA bit 0.
            #expect(device.emulator.read(bar: 1, offset: 0x800, size: 8) & 1 != 0, "the config interrupt")
            #expect(device.read(address: VirtioNetDevice.virtioBase + VirtioNetDevice.isrOffset, size: 1) & 2 != 0)

            let logPath = NSTemporaryDirectory() + "irqfd-testpmd-\(UUID().uuidString).log"
            defer { unlink(logPath) }
            let second = try TestpmdProcess.start(socketPath: backend.socketPath, queuePairs: 1, logPath: logPath)
            defer { second.stop() }
            #expect(driver.initialise(features: Self.macOnly), "status \(device.status)")
            #expect(device.reconnectCount == 1)
            #expect(second.waitUntilLinkUp(), "the restarted testpmd's link")
            frames.postReceiveBuffers()
            frames.send(netFrame(2, length: 1514))
            #expect(frames.receive() == netFrame(2, length: 1514), "through the restarted testpmd")
        }

        @Test func aHundredLifecyclesCloseTheirDescriptorsAndLeaveTheGSIsAsTheyWere() throws {
            let backend = try NetBackend(queuePairs: 2)
            defer { backend.stop() }
            let vm = try TinyVM(.init(cpus: 1))
            let free = vm.irqfd.freeGsiCount
            for round in 0..<100 {
                var owned: [OwnedDescriptor] = []
                do {
                    let device = try VirtioNetDevice(vm: vm, socketPath: backend.socketPath, queuePairs: 2)
                    let driver = NetHostDriver(device: device, memory: vm.memory)
                    #expect(driver.initialise(features: ControlQueueTests.features), "round \(round)")
                    // Every vector gets its route: queue calls and the control queue's answer.
                    for v in 0...5 { _ = try device.emulator.event(for: v) }
                    #expect(driver.request([4, 0, 2, 0]) == VirtioNet.Control.ok, "round \(round)")
                    device.writeStatus(0)
                    owned = try descriptorsOwned(by: device)
                    #expect(owned.count == 11, "the socket, 5 kicks, 5 own calls")
                }
                expectClosedAfterRelease(owned, round: round)
            }
            #expect(vm.irqfd.freeGsiCount == free)
            #expect(backend.isRunning)
        }

        /// Seeded random accesses of every width at the device's entry points
        /// (common configuration, ISR, device configuration, notify, the MSI-X
        /// table and PBA, PCI configuration), status steps with random queue
        /// setups among them, so that DRIVER_OK hands random rings to testpmd and
        /// the VMM's control queue walks whatever the rings hold. Nothing
        /// crashes, and afterwards the device still works.
        @Test func randomGuestAccessesLeaveAWorkingDevice() throws {
            let seed =
                ProcessInfo.processInfo.environment["IRQFD_FUZZ_SEED"].flatMap { UInt64($0) }
                ?? UInt64.random(in: 1...UInt64.max)
            var rng = SplitMix64(seed: seed)
            let rig = try HostNet(queuePairs: 2)
            defer { rig.close() }
            let (backend, vm, device) = (rig.backend, rig.vm, rig.device)
            // Ring contents for the control queue to walk: random bytes where the rings may point.
            vm.memory.load((0..<0x40000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: 0x20000)
            let base = VirtioNetDevice.virtioBase
            /// Queue `q` with a plausible size and vector and rings somewhere in (or past) RAM.
            func randomQueue(_ q: Int, _ rng: inout SplitMix64) {
                device.write(address: base + 0x16, size: 2, value: UInt64(q))
                device.write(address: base + 0x18, size: 2, value: 1 << (rng.next() % 10))
                device.write(address: base + 0x1A, size: 2, value: rng.next() % 8)
                for field: UInt64 in [0x20, 0x28, 0x30] {
                    let inRAM = 0x20000 + (rng.next() % 0x3F000) & ~0xF
                    device.write(address: base + field, size: 8, value: rng.next() % 8 == 0 ? rng.next() : inRAM)
                }
                device.write(address: base + 0x1C, size: 2, value: 1)
            }
            for _ in 0..<10_000 {
                let size = [1, 2, 4, 8][Int(rng.next() % 4)]
                let value = rng.next()
                switch rng.next() % 10 {
                case 0, 1, 2:
                    device.write(address: base + rng.next() % 0x38, size: size, value: value)
                case 3:
                    // A driver's whole initialisation with a random subset of the
                    // offered features and random queues, up to DRIVER_OK.
                    let accepted = device.offeredFeatures & rng.next() | VirtioFeature.version1
                    for step: UInt64 in [0, 1, 3] { device.write(address: base + 0x14, size: 1, value: step) }
                    device.write(address: base + 0x08, size: 4, value: 0)
                    device.write(address: base + 0x0C, size: 4, value: accepted & 0xFFFF_FFFF)
                    device.write(address: base + 0x08, size: 4, value: 1)
                    device.write(address: base + 0x0C, size: 4, value: accepted >> 32)
                    device.write(address: base + 0x14, size: 1, value: 0x0B)
                    for q in 0..<device.queueCount where rng.next() % 3 != 0 { randomQueue(q, &rng) }
                    device.write(address: base + 0x14, size: 1, value: 0x0F)
                case 4:
                    randomQueue(Int(rng.next() % 6), &rng)
                case 5:
                    device.write(address: base + 0x3000 + rng.next() % 0x28, size: size, value: value % 8)
                case 6:
                    let structure: UInt64 = [0, 0x1000, 0x2000, 0x3000][Int(rng.next() % 4)]
                    _ = device.read(address: base + structure + rng.next() % 0x40, size: size)
                case 7:
                    let offset = rng.next() % 0x1000
                    device.write(address: VirtioNetDevice.msixBase + offset, size: size == 8 ? 4 : size, value: value)
                case 8:
                    let width = [1, 2, 4][Int(rng.next() % 3)]
                    device.configWrite(
                        offset: Int(rng.next() % 0x100), size: width, value: UInt32(truncatingIfNeeded: value))
                default:
                    _ = device.read(address: base + rng.next() % 0x38, size: size)
                }
            }
            print("net fuzz seed \(seed): \(device.startCount) starts, \(device.resetCount) resets; \(device.counters)")
            #expect(device.startCount > 0, "the accesses reached DRIVER_OK (seed \(seed))")
            // Still a working device: reset, initialise, a frame through the first pair.
            device.configWrite(offset: 0x04, size: 2, value: 0x0006)
            let driver = NetHostDriver(device: device, memory: vm.memory)
            vm.memory.load([UInt8](repeating: 0, count: 0x80000), at: 0x20000)
            let ok = driver.initialise(features: Self.macOnly)
            let error = String(describing: device.lastBackendError)
            #expect(ok, "seed \(seed): status \(device.status); \(device.counters); \(error)")
            if !ok, device.status & VirtioStatus.needsReset != 0 {
                // A backend the accesses broke (reported, never a crash): the reset reconnects.
                #expect(driver.initialise(features: Self.macOnly), "seed \(seed): after a second reset")
            }
            #expect(backend.process.waitUntilLinkUp(), "seed \(seed); \(backend.log.suffix(800))")
            let frames = NetFrameDriver(driver)
            frames.postReceiveBuffers()
            frames.send(netFrame(7, length: 777))
            #expect(frames.receive() == netFrame(7, length: 777), "seed \(seed); \(backend.log.suffix(800))")
        }
    }
}

#endif
