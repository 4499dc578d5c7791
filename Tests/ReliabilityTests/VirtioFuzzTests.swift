#if os(Linux)
import Foundation
import Glibc
import KVMTestSupport
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

// Fuzzing, the guest side (TinyVM's Reliability article): seeded random MMIO and
// configuration accesses of every width at random offsets into the
// virtio-blk device's entry points (BAR4 common/ISR/device/notify, BAR1
// MSI-X table and PBA, PCI configuration with the MSI-X capability), driving
// it as a guest would: status steps, feature words, random queue sizes,
// vectors, ring addresses (in RAM and not) and queue_enable, DRIVER_OK and
// resets, which reach the real embedded back-end. No crash, no backend error
// (the device never sends the back-end anything it would refuse), and
// afterwards the device still works: reset, initialise, a real write and read
// with status 0 and the right data, then the driver guest itself.
//
// IRQFD_FUZZ_SEED repeats a run; IRQFD_FUZZ_VIRTIO_OPS (default 50,000) makes
// it longer. Corpus/virtio-mmio-seeds.txt holds seeds that are always replayed.

/// The corpus directory (kept in the repository, read by path).
let corpusDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Corpus")

/// A virtio-blk driver in the host that talks to the device only through its
/// MMIO entry points (as a guest's accesses arrive) and builds requests in guest RAM.
struct MMIOBlkDriver {
    let device: VirtioBlkDevice
    let memory: GuestMemory
    /// Queue 0's rings (size 8) and request area, away from the guest program.
    static let ring: UInt64 = 0x60000, size: UInt16 = 8
    static var descriptors: UInt64 { ring }
    static var available: UInt64 { ring + 0x1000 }
    static var used: UInt64 { ring + 0x2000 }
    static var header: UInt64 { ring + 0x3000 }
    static var status: UInt64 { ring + 0x3800 }
    static var data: UInt64 { ring + 0x4000 }

    func write(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        device.write(address: VirtioBlkDevice.virtioBase + offset, size: size, value: value)
    }
    func read(_ offset: UInt64, _ size: Int) -> UInt64 {
        device.read(address: VirtioBlkDevice.virtioBase + offset, size: size)
    }

    /// Reset and the whole initialisation (virtio 1.2 section 3.1.1), queue 0 with no vector (polled).
    func initialise() throws {
        // Firmware's part: memory decoding and bus mastering on, MSI-X off and unmasked.
        device.configWrite(offset: 0x04, size: 2, value: 0x0006)
        device.configWrite(offset: VirtioBlkDevice.msixCapabilityOffset + 2, size: 2, value: 0)
        write(0x14, 1, 0)
        // The reset is done when device_status reads 0 (virtio 1.2 section 4.1.4.3.1).
        _ = eventually { read(0x14, 1) == 0 }
        guard read(0x14, 1) == 0 else { throw TestFailureReason("status \(read(0x14, 1)) after reset") }
        write(0x14, 1, 1)
        write(0x14, 1, 3)
        write(0x00, 4, 1)
        guard read(0x04, 4) & 1 != 0 else { throw TestFailureReason("VERSION_1 not offered") }
        write(0x08, 4, 0)
        write(0x0C, 4, 0)
        write(0x08, 4, 1)
        write(0x0C, 4, 1)
        write(0x14, 1, 0x0B)
        guard read(0x14, 1) & 8 != 0 else { throw TestFailureReason("FEATURES_OK refused") }
        memory.load([UInt8](repeating: 0, count: 0x5000), at: Self.ring)
        write(0x16, 2, 0)
        write(0x18, 2, UInt64(Self.size))
        write(0x1A, 2, 0xFFFF)
        write(0x20, 8, Self.descriptors)
        write(0x28, 8, Self.available)
        write(0x30, 8, Self.used)
        write(0x1C, 2, 1)
        write(0x14, 1, 0x0F)
        // The write returned at once; the device's worker starts the queue.
        device.waitUntilIdle()
        guard device.isRunning(queue: 0) else {
            throw TestFailureReason(
                "queue 0 did not start: \(device.counters); \(String(describing: device.lastBackendError))")
        }
    }

    private func store(_ value: some FixedWidthInteger, at address: UInt64) {
        memory.load(withUnsafeBytes(of: value.littleEndian) { Array($0) }, at: address)
    }

    /// One request (header, 512-byte data, status), notified through the notify
    /// region and polled for in the used ring; returns the status byte.
    func request(write isWrite: Bool, sector: UInt64, index: UInt16) throws -> UInt8 {
        store(UInt32(isWrite ? 1 : 0), at: Self.header)
        store(UInt32(0), at: Self.header + 4)
        store(sector, at: Self.header + 8)
        memory.load([0xFF], at: Self.status)
        func descriptor(_ i: UInt64, _ address: UInt64, _ length: UInt32, _ flags: UInt16, _ next: UInt16) {
            store(address, at: Self.descriptors + 16 * i)
            store(length, at: Self.descriptors + 16 * i + 8)
            store(flags, at: Self.descriptors + 16 * i + 12)
            store(next, at: Self.descriptors + 16 * i + 14)
        }
        descriptor(0, Self.header, 16, 1, 1)
        descriptor(1, Self.data, 512, isWrite ? 1 : 3, 2)
        descriptor(2, Self.status, 1, 2, 0)
        store(UInt16(0), at: Self.available + 4 + 2 * UInt64(index % Self.size))
        store(index &+ 1, at: Self.available + 2)
        write(VirtioBlkDevice.notifyOffset, 2, 0)
        let deadline = ContinuousClock.now + .seconds(20)
        while memory.bytes(at: Self.used + 2, count: 2) != withUnsafeBytes(of: (index &+ 1).littleEndian, { Array($0) })
        {
            guard ContinuousClock.now < deadline else {
                throw TestFailureReason("request \(index) not completed within 20 s")
            }
            usleep(1000)
        }
        return memory.bytes(at: Self.status, count: 1)[0]
    }
}

/// The fuzzer: a device on a VM with a good embedded back-end, and the accesses.
final class VirtioDeviceFuzzer {
    let backend: HostileBackend
    let vm: TinyVM
    let device: VirtioBlkDevice

    init() throws {
        backend = try HostileBackend(nil)
        vm = try TinyVM(.init(cpus: 1))
        device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath)
    }

    static let widths = [1, 2, 4, 8]

    func step(_ r: inout SplitMix64) {
        let width = Self.widths[Int(r.next() % 4)]
        let common = VirtioBlkDevice.virtioBase
        func commonWrite(_ offset: UInt64, _ size: Int, _ value: UInt64) {
            device.write(address: common + offset, size: size, value: value)
        }
        switch r.next() % 17 {
        case 0, 1: device.fuzzBAR4(&r, width: width)
        case 2, 3: device.fuzzBAR1(&r, width: width)
        case 4: device.fuzzConfigurationSpace(&r)
        case 5, 6: device.fuzzStatus(&r)
        case 7: device.fuzzFeatureWords(&r)
        case 8:  // queue_select, queue_size
            commonWrite(0x16, 2, r.next() % 3)
            commonWrite(0x18, 2, r.next() % 2 == 0 ? 1 << (r.next() % 10) : r.next() & 0xFFFF)
        case 9:  // vectors
            let vectors: [UInt64] = [0, 1, 2, 0xFFFF, 7, r.next() & 0xFFFF]
            commonWrite(r.next() % 2 == 0 ? 0x10 : 0x1A, 2, vectors[Int(r.next() % UInt64(vectors.count))])
        case 10, 11: device.fuzzRingAddressField(&r, memorySize: vm.memory.size)
        case 12: device.fuzzNotify(&r, width: width)
        case 15:  // a whole initialisation as a guest does it, with random values on the way
            device.fuzzNegotiation(&r)
            for _ in 0..<(1 + r.next() % 2) {
                let select: UInt64 = r.next() % 5 == 0 ? 1 : 0
                device.fuzzQueueSetup(&r, select: select, memorySize: vm.memory.size)
            }
            if r.next() % 8 != 0 { commonWrite(0x14, 1, 0x0F) }
            for _ in 0..<(r.next() % 3) {
                device.write(address: VirtioBlkDevice.notifyAddress(queue: 0), size: 2, value: 0)
            }
        case 13:  // ISR and device config reads
            _ = device.read(address: common + VirtioBlkDevice.isrOffset, size: width)
            _ = device.read(address: common + VirtioBlkDevice.deviceOffset + r.next() % 64, size: width)
        default:  // common config reads at every offset
            _ = device.read(address: common + r.next() % 0x40, size: width)
        }
    }

    /// What must hold after any access, or why it does not.
    func incoherence() -> String? {
        if let why = device.statusIncoherence(queues: 0..<1) { return why }
        if let error = device.lastBackendError { return "the backend refused the device: \(error)" }
        return nil
    }

    /// Runs `steps` accesses from `seed`; returns the first incoherence, if any.
    func fuzz(seed: UInt64, steps: Int) -> String? {
        KVMTestSupport.fuzz(seed: seed, steps: steps, step: step, incoherence: incoherence)
    }

    /// The device still works: reset, initialise, write then read a sector
    /// through the MMIO entry points; then the driver guest writes 8 sectors.
    func expectStillWorks(seed: UInt64, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let driver = MMIOBlkDriver(device: device, memory: vm.memory)
        try driver.initialise()
        let pattern = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 3 &+ Int(seed % 251)) }
        vm.memory.load(pattern, at: MMIOBlkDriver.data)
        #expect(try driver.request(write: true, sector: 100, index: 0) == 0, sourceLocation: sourceLocation)
        vm.memory.load([UInt8](repeating: 0, count: 512), at: MMIOBlkDriver.data)
        #expect(try driver.request(write: false, sector: 100, index: 1) == 0, sourceLocation: sourceLocation)
        #expect(
            vm.memory.bytes(at: MMIOBlkDriver.data, count: 512) == pattern, "read back", sourceLocation: sourceLocation)
        #expect(try backend.imageSector(100) == pattern, "in the image", sourceLocation: sourceLocation)
        // The guest program: a fresh RAM image, its own reset and initialisation, 8 writes.
        vm.memory.load([UInt8](repeating: 0, count: 0x40000), at: 0)
        try vm.load(GuestProgram.virtioBlk.image)
        configureBlkGuest(vm, batches: 2, perBatch: 4, first: 200, write: true)
        for j in 0..<8 {
            vm.memory.load(HostileBackend.sector(1000 + j), at: VirtioBlkGuestLayout.buffer(queue: 0, request: j))
        }
        let outcome = vm.run(timeout: .seconds(120))
        #expect(
            outcome == .exited(code: 0),
            "\(outcome); \(device.counters); \(String(describing: device.lastBackendError))",
            sourceLocation: sourceLocation)
        #expect(vm.memory.read32(at: VirtioBlkGuestLayout.failed) == 0, sourceLocation: sourceLocation)
        device.writeStatus(0)
        for j in 0..<8 {
            #expect(
                try backend.imageSector(200 + j) == HostileBackend.sector(1000 + j), "sector \(200 + j)",
                sourceLocation: sourceLocation)
        }
    }
}

@Suite(needsKVM, embeddedBuilt) struct VirtioFuzzTests {
    @Test func randomGuestAccessesNeverCrashAndTheDeviceStillWorks() throws {
        let seed = announcedSeed("IRQFD_FUZZ_SEED", for: "virtio-blk MMIO fuzz")
        let steps = environmentCount("IRQFD_FUZZ_VIRTIO_OPS", default: 50_000)
        let fuzzer = try VirtioDeviceFuzzer()
        let start = ContinuousClock.now
        let why = fuzzer.fuzz(seed: seed, steps: steps)
        #expect(why == nil, "seed \(seed): \(why ?? "")")
        print(
            "virtio-blk MMIO fuzz: \(steps) accesses in \(ContinuousClock.now - start), \(fuzzer.device.startCount) starts, \(fuzzer.device.resetCount) resets; \(fuzzer.device.counters)"
        )
        try fuzzer.expectStillWorks(seed: seed)
    }

    /// Seeds kept in Corpus/virtio-mmio-seeds.txt ("seed steps # why"), replayed every run.
    @Test func corpusSeedsStayFixed() throws {
        let text = try String(
            contentsOf: corpusDirectory.appendingPathComponent("virtio-mmio-seeds.txt"), encoding: .utf8)
        let entries = text.split(separator: "\n").compactMap { line -> (UInt64, Int)? in
            let fields = line.split(separator: "#")[0].split(separator: " ")
            guard fields.count == 2, let seed = UInt64(fields[0]), let steps = Int(fields[1]) else { return nil }
            return (seed, steps)
        }
        #expect(!entries.isEmpty)
        for (seed, steps) in entries {
            let fuzzer = try VirtioDeviceFuzzer()
            let why = fuzzer.fuzz(seed: seed, steps: steps)
            #expect(why == nil, "corpus seed \(seed): \(why ?? "")")
            try fuzzer.expectStillWorks(seed: seed)
        }
    }
}
#endif
