#if os(Linux)
import Foundation
import KVMTestSupport
import KVM
import TestSupport
import Testing
import TinyVM
import Virtio

/// dpdk-testpmd serving `queuePairs` pairs, a VM (built, not run) with the
/// virtio-net device attached to it, and a ``NetHostDriver`` of the device.
/// `close` disconnects the device, then stops testpmd.
final class HostNet {
    let backend: NetBackend
    let vm: TinyVM
    let device: VirtioNetDevice
    let driver: NetHostDriver

    init(queuePairs: Int) throws {
        backend = try NetBackend(queuePairs: queuePairs)
        do {
            vm = try TinyVM(.init(cpus: 1))
            device = try VirtioNetDevice.attach(to: vm, socketPath: backend.socketPath, queuePairs: queuePairs)
        } catch {
            backend.stop()
            throw error
        }
        driver = NetHostDriver(device: device, memory: vm.memory)
    }

    func close() {
        device.disconnect()
        backend.stop()
    }

    /// Whether testpmd's link came up after DRIVER_OK (`TestpmdProcess.isLinkUp`):
    /// a frame sent before may be dropped.
    func waitUntilLinkUp() -> Bool { backend.process.waitUntilLinkUp() }
}

/// The driver side of the virtio-net device on the host, through the
/// device's own MMIO entry points (the code a guest access reaches): it
/// writes control requests a guest could write, well-formed or not, into
/// the control queue and reads the answers. The VM is built but not run.
final class NetHostDriver {
    let device: VirtioNetDevice
    let memory: GuestMemory
    static let common = VirtioNetDevice.virtioBase + VirtioNetDevice.commonOffset
    static let size: UInt16 = 16
    /// Queue q's rings.
    static func ring(_ q: Int) -> UInt64 { 0x20000 + 0x10000 * UInt64(q) }
    /// Where requests and acks go.
    static let buffers: UInt64 = 0x90000
    var avail: UInt16 = 0
    let control: Int

    init(device: VirtioNetDevice, memory: GuestMemory) {
        self.device = device
        self.memory = memory
        control = device.deviceType.controlQueue ?? 0
    }

    func w(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        device.write(address: Self.common + offset, size: size, value: value)
    }
    func r(_ offset: UInt64, _ size: Int) -> UInt64 { device.read(address: Self.common + offset, size: size) }

    /// Virtio 1.2 section 3.1.1 with `features` (bits 0..31, and VERSION_1),
    /// every queue of size 16 with vector q + 1, DRIVER_OK.
    func initialise(features: UInt32) -> Bool {
        avail = 0
        let queues = (0..<device.queueCount).map { q in
            HostQueue(q, size: Int(Self.size), vector: UInt16(q + 1), ring: Self.ring(q))
        }
        return device.bringUp(features: features, queues: queues, memory: memory)
    }

    /// A descriptor of the control queue's table.
    struct Descriptor {
        var address: UInt64
        var length: UInt32
        var flags: UInt16 = 0
        var next: UInt16 = 0
    }

    /// Publishes the chain at `head` made of `descriptors` (at slots 0...),
    /// notifies, and returns the used element (id, len) once the device has
    /// answered, or nil if it did not within 10 s.
    func submit(_ descriptors: [Descriptor], head: UInt16 = 0) -> (id: UInt32, length: UInt32)? {
        let ring = Self.ring(control)
        for (i, d) in descriptors.enumerated() {
            memory.write64(d.address, at: ring + 16 * UInt64(i))
            let word = UInt64(d.length) | UInt64(d.flags) << 32 | UInt64(d.next) << 48
            memory.write64(word, at: ring + 16 * UInt64(i) + 8)
        }
        memory.store(head, at: ring + 0x1004 + 2 * UInt64(avail % Self.size))
        avail &+= 1
        memory.store(avail, at: ring + 0x1002)
        device.write(address: VirtioNetDevice.notifyAddress(queue: control), size: 2, value: UInt64(control))
        let target = avail
        guard eventually(.seconds(10), { memory.load(UInt16.self, at: ring + 0x2002) == target }) else { return nil }
        let slot = UInt64((target &- 1) % Self.size)
        let element = ring + 0x2004 + 8 * slot
        return (memory.load(UInt32.self, at: element), memory.load(UInt32.self, at: element + 4))
    }

    /// A request `bytes` with one writable ack byte (0xFF until answered):
    /// returns the ack, or nil if nothing was written.
    func request(_ bytes: [UInt8]) -> UInt8? {
        memory.load(bytes, at: Self.buffers)
        memory.load([0xFF], at: Self.buffers + 0x100)
        let chain = [
            Descriptor(address: Self.buffers, length: UInt32(bytes.count), flags: 1, next: 1),
            Descriptor(address: Self.buffers + 0x100, length: 1, flags: 2),
        ]
        guard let used = submit(chain), used.id == 0, used.length == 1 else { return nil }
        return memory.bytes(at: Self.buffers + 0x100, count: 1)[0]
    }
}

extension VirtioNetTests {
    @Suite struct ControlQueueTests {
        static let ok = VirtioNet.Control.ok
        static let err = VirtioNet.Control.error
        /// MAC, CTRL_VQ, MQ.
        static let features: UInt32 = (1 << 5) | (1 << 17) | (1 << 22)

        @Test func hostileControlRequestsAreAnsweredPerSpecAndTheDeviceKeepsWorking() throws {
            let rig = try HostNet(queuePairs: 2)
            defer { rig.close() }
            let (backend, vm, device, driver) = (rig.backend, rig.vm, rig.device, rig.driver)
            #expect(driver.initialise(features: Self.features), "status \(device.status); \(backend.log.suffix(800))")
            #expect(device.isRunning(queue: 4))
            // Well-formed: both pairs, then one.
            #expect(driver.request([4, 0, 2, 0]) == Self.ok, "\(backend.log.suffix(800))")
            #expect(driver.request([4, 0, 1, 0]) == Self.ok)
            // A class or command whose feature was not negotiated (or does not exist).
            #expect(driver.request([0, 0, 1]) == Self.err, "VIRTIO_NET_CTRL_RX without CTRL_RX")
            #expect(driver.request([1, 1, 0, 0, 0, 0, 0, 0]) == Self.err, "MAC_ADDR_SET without CTRL_MAC_ADDR")
            #expect(driver.request([3, 0]) == Self.err, "ANNOUNCE_ACK without GUEST_ANNOUNCE")
            #expect(driver.request([9, 0, 0, 0]) == Self.err, "no such class")
            #expect(driver.request([4, 1, 0, 0]) == Self.err, "RSS_CONFIG without RSS")
            #expect(driver.request([4, 7, 1, 0]) == Self.err, "no such MQ command")
            // Too short to hold what it says.
            #expect(driver.request([4]) == Self.err, "no command byte")
            #expect(driver.request([4, 0]) == Self.err, "VQ_PAIRS_SET without its le16")
            #expect(driver.request([4, 0, 2]) == Self.err, "half a le16")
            // Pair counts out of range (virtio 1.2 section 5.1.6.5.5: 1...max_virtqueue_pairs).
            #expect(driver.request([4, 0, 0, 0]) == Self.err, "0 pairs")
            #expect(driver.request([4, 0, 3, 0]) == Self.err, "more than max_virtqueue_pairs")
            #expect(driver.request([4, 0, 0xFF, 0xFF]) == Self.err, "65535 pairs")
            #expect(device.counters.badServedRequests == 0, "each of those was a well-formed chain")

            // Chains that break the ring's rules: used with nothing written, counted.
            let b = NetHostDriver.buffers
            typealias D = NetHostDriver.Descriptor
            vm.memory.load([4, 0, 2, 0, 0xFF], at: b)
            var used = driver.submit([D(address: b, length: 4)])
            #expect(used?.length == 0, "no writable byte: nowhere to put an ack")
            used = driver.submit([D(address: b + 4, length: 1, flags: 3, next: 1), D(address: b, length: 4)])
            #expect(used?.length == 0, "readable after writable")
            used = driver.submit([D(address: b, length: 4, flags: 1, next: 0)])
            #expect(used?.length == 0, "a chain that loops")
            used = driver.submit([
                D(address: 0xFFFF_0000_0000, length: 4, flags: 1, next: 1), D(address: b + 4, length: 1, flags: 2),
            ])
            #expect(used?.length == 0, "a buffer outside RAM")
            used = driver.submit([D(address: b, length: 4, flags: 1, next: 99), D(address: b + 4, length: 1, flags: 2)])
            #expect(used?.length == 0, "next beyond the table")
            used = driver.submit([D(address: b, length: 4)], head: 200)
            #expect(used?.id == 200 && used?.length == 0, "a head beyond the table")
            used = driver.submit([D(address: b, length: 32, flags: 4)])
            #expect(used?.length == 0, "an indirect table without VIRTIO_F_INDIRECT_DESC")
            #expect(device.counters.badServedRequests == 6, "the chain with no writable byte broke no rule")
            #expect(vm.memory.bytes(at: b + 4, count: 1) == [0xFF], "nothing written into a refused chain")

            // Still answering, still running, and every answer came through the control
            // queue's vector (5): masked (MSI-X is off), it latched in the PBA.
            #expect(driver.request([4, 0, 2, 0]) == Self.ok)
            #expect(device.status & VirtioStatus.needsReset == 0)
            #expect(device.isBackendConnected)
            #expect(device.emulator.read(bar: 1, offset: 0x800, size: 8) & (1 << 5) != 0, "PBA bit 5")
            #expect(backend.isRunning)
        }

        /// With MQ the device starts on the first pair alone and the second
        /// carries nothing until VQ_PAIRS_SET enables it (virtio 1.2 section
        /// 5.1.6.5.5); VQ_PAIRS_SET 1 takes it away again.
        @Test func theSecondPairCarriesFramesOnlyWhileVQPairsSetHasItEnabled() throws {
            let rig = try HostNet(queuePairs: 2)
            defer { rig.close() }
            let driver = rig.driver
            #expect(driver.initialise(features: Self.features))
            #expect(rig.waitUntilLinkUp(), "\(rig.backend.log.suffix(800))")
            let first = NetFrameDriver(driver, pair: 0)
            let second = NetFrameDriver(driver, pair: 1)
            first.postReceiveBuffers()
            second.postReceiveBuffers()
            first.send(netFrame(1, length: 200))
            #expect(first.receive() == netFrame(1, length: 200), "the first pair runs from DRIVER_OK")
            second.send(netFrame(2, length: 300))
            #expect(second.receive(timeout: .milliseconds(500)) == nil, "the second pair is not enabled yet")
            #expect(driver.request([4, 0, 2, 0]) == Self.ok)
            #expect(second.receive() == netFrame(2, length: 300), "enabled: testpmd takes the waiting frame")
            second.send(netFrame(3, length: 1514))
            #expect(second.receive() == netFrame(3, length: 1514))
            #expect(driver.request([4, 0, 1, 0]) == Self.ok)
            second.send(netFrame(4, length: 60))
            #expect(second.receive(timeout: .milliseconds(500)) == nil, "disabled again")
            first.send(netFrame(5, length: 61))
            #expect(first.receive() == netFrame(5, length: 61))
        }

        /// Offered: VERSION_1, MAC, STATUS, MQ and CTRL_VQ (the VMM's), and of
        /// testpmd's features only those that need nothing from the VMM. The
        /// backend hears of none of the VMM's own, and of nothing it did not offer.
        @Test func featureNegotiationOffersOnlyWhatBothSidesHonourAndTellsTheBackendItsShare() throws {
            let rig = try HostNet(queuePairs: 2)
            defer { rig.close() }
            let (vm, device) = (rig.vm, rig.device)
            let f = VirtioNet.Feature.self
            let testpmd = device.frontend.backendFeatures
            let vmm = VirtioFeature.version1 | f.mac | f.status | f.multiQueue | f.controlQueue
            #expect(device.offeredFeatures == vmm | (testpmd & f.safeBackendFeatures))
            // testpmd offers these, and none of them may reach the guest: RING_PACKED 34,
            // IN_ORDER 35, LOG_ALL 26, ANY_LAYOUT 27, PROTOCOL_FEATURES 30, MTU 3,
            // legacy GSO 6, CTRL_RX 18, GUEST_ANNOUNCE 21.
            for bit in [34, 35, 26, 27, 30, 3, 6, 18, 21] {
                #expect(device.offeredFeatures & (1 << UInt64(bit)) == 0, "bit \(bit)")
            }
            #expect(device.offeredFeatures & (1 << 28) != 0 && device.offeredFeatures & (1 << 29) != 0)
            let driver = NetHostDriver(device: device, memory: vm.memory)
            let accepted = device.offeredFeatures
            #expect(driver.initialise(features: UInt32(truncatingIfNeeded: accepted)))
            #expect(device.driverFeatures == accepted)
            let told = device.frontend.acceptedFeatures
            #expect(told & ~testpmd == 0, "SET_FEATURES: a subset of GET_FEATURES")
            #expect(told & (f.mac | f.status | f.controlQueue) == 0, "the VMM's own features stay the VMM's")
            #expect(
                told & ~VirtioFeature.vhostProtocolFeatures == accepted & testpmd & ~(f.mac | f.status | f.controlQueue)
            )
            // With INDIRECT_DESC negotiated, a request through an indirect table is served.
            let b = NetHostDriver.buffers
            vm.memory.load([4, 0, 2, 0], at: b)
            vm.memory.load([0xFF], at: b + 0x100)
            vm.memory.write64(b, at: b + 0x200)
            vm.memory.write64(4 | 1 << 32 | 1 << 48, at: b + 0x208)  // NEXT, next 1
            vm.memory.write64(b + 0x100, at: b + 0x210)
            vm.memory.write64(1 | 2 << 32, at: b + 0x218)  // WRITE
            let used = driver.submit([NetHostDriver.Descriptor(address: b + 0x200, length: 32, flags: 4)])
            #expect(used?.length == 1)
            #expect(vm.memory.bytes(at: b + 0x100, count: 1) == [Self.ok])
        }

        @Test func aSinglePairOffersNeitherMQNorTheControlQueue() throws {
            let rig = try HostNet(queuePairs: 1)
            defer { rig.close() }
            let device = rig.device
            let f = VirtioNet.Feature.self
            #expect(device.offeredFeatures & (f.multiQueue | f.controlQueue) == 0)
            #expect(device.queueCount == 2)
            #expect(device.deviceConfiguration == VirtioNet.defaultMAC + [1, 0, 1, 0], "mac, LINK_UP, 1 pair")
        }

        @Test func theControlQueueStartsAfreshAfterAReset() throws {
            let rig = try HostNet(queuePairs: 2)
            defer { rig.close() }
            let (device, driver) = (rig.device, rig.driver)
            for round in 0..<3 {
                #expect(driver.initialise(features: Self.features), "round \(round): status \(device.status)")
                #expect(driver.request([4, 0, 2, 0]) == Self.ok, "round \(round)")
                #expect(driver.request([4, 0, 1, 0]) == Self.ok, "round \(round)")
                device.writeStatus(0)
                #expect(device.status == 0)
                #expect(!device.isRunning(queue: 4))
            }
        }

        @Test func withoutMultiQueueNegotiatedPairsSetIsRefused() throws {
            let rig = try HostNet(queuePairs: 2)
            defer { rig.close() }
            let driver = rig.driver
            // MAC and CTRL_VQ only.
            #expect(driver.initialise(features: (1 << 5) | (1 << 17)))
            #expect(driver.request([4, 0, 1, 0]) == VirtioNet.Control.error)
        }
    }
}
#endif
