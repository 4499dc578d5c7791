#if os(Linux)
import Foundation
import KVMTestSupport
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

// The guest side of the virtio-fs device, fuzzed: seeded random accesses of
// every width into BAR4 (common configuration, ISR, the device configuration
// with the tag, notify), BAR1 (MSI-X table and PBA) and the PCI configuration
// space, driving it as a guest would (status steps, feature words, queue
// sizes, vectors, ring addresses in RAM and not, queue_enable, DRIVER_OK and
// resets), all of which reach virtiofsd. No crash, no backend error (the
// device never sends virtiofsd anything it would refuse), virtiofsd still
// running; afterwards the device still serves FUSE to a host driver and then
// to the driver guest.
//
// IRQFD_FUZZ_SEED repeats a run; IRQFD_FUZZ_FS_OPS (default 20,000) makes it longer.

private final class FsDeviceFuzzer {
    let share: SharedDirectory
    let backend: FileSystemBackend
    let vm: TinyVM
    let device: VirtioFsDevice
    let readData = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 5 &+ 1) }

    init() throws {
        share = try SharedDirectory()
        try share.write("from-host.bin", readData)
        backend = try FileSystemBackend(sharedDirectory: share.path)
        vm = try TinyVM(.init(cpus: 1))
        device = try VirtioFsDevice.attach(to: vm, socketPath: backend.socketPath, tag: "fuzzed")
    }

    deinit {
        device.disconnect()
        backend.stop()
    }

    func step(_ r: inout SplitMix64) {
        let width = [1, 2, 4, 8][Int(r.next() % 4)]
        let base = VirtioFsDevice.virtioBase
        func common(_ offset: UInt64, _ size: Int, _ value: UInt64) {
            device.write(address: base + offset, size: size, value: value)
        }
        switch r.next() % 14 {
        case 0, 1: device.fuzzBAR4(&r, width: width)
        case 2: device.fuzzBAR1(&r, width: width)
        case 3: device.fuzzConfigurationSpace(&r)
        case 4, 5: device.fuzzStatus(&r)
        case 6: device.fuzzFeatureWords(&r)  // VERSION_1 is bit 0 of word 1; fs offers no feature bit 0
        case 7:  // queue_select (2 does not exist), queue_size, vectors
            common(0x16, 2, r.next() % 4)
            common(0x18, 2, r.next() % 2 == 0 ? 1 << (r.next() % 10) : r.next() & 0xFFFF)
            let vectors: [UInt64] = [0, 1, 2, 3, 0xFFFF, r.next() & 0xFFFF]
            common(r.next() % 2 == 0 ? 0x10 : 0x1A, 2, vectors[Int(r.next() % UInt64(vectors.count))])
        case 8, 9: device.fuzzRingAddressField(&r, memorySize: vm.memory.size)
        case 10: device.fuzzNotify(&r, width: width)
        case 11:  // the device configuration: the tag and num_request_queues, read and (read-only) written
            let address = base + VirtioFsDevice.deviceOffset + r.next() % 48
            if r.next() % 2 == 0 {
                _ = device.read(address: address, size: width)
            } else {
                device.write(address: address, size: width, value: r.next())
            }
        case 12:  // a whole initialisation with random values on the way, both queues
            device.fuzzNegotiation(&r)
            for q in 0..<2 {
                let select = r.next() % 5 == 0 ? r.next() % 3 : UInt64(q)
                device.fuzzQueueSetup(&r, select: select, memorySize: vm.memory.size)
            }
            if r.next() % 8 != 0 { common(0x14, 1, 0x0F) }
        default:  // ISR and common configuration reads
            _ = device.read(
                address: base + (r.next() % 2 == 0 ? VirtioFsDevice.isrOffset : r.next() % 0x40), size: width)
        }
    }

    /// What must hold after any access, or why it does not.
    func incoherence() -> String? {
        if let why = device.statusIncoherence(queues: 0..<2) { return why }
        if let error = device.lastBackendError { return "virtiofsd refused the device or went away: \(error)" }
        if !backend.isRunning { return "virtiofsd exited" }
        return nil
    }

    func fuzz(seed: UInt64, steps: Int) -> String? {
        KVMTestSupport.fuzz(seed: seed, steps: steps, step: step, incoherence: incoherence)
    }
}

@Suite(needsKVM, virtiofsdInstalled) struct VirtioFsFuzzTests {
    @Test func randomGuestAccessesNeverBreakTheDeviceOrVirtiofsdAndFuseStillWorks() throws {
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["IRQFD_FUZZ_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64(UInt32.max))
        let steps = environment["IRQFD_FUZZ_FS_OPS"].flatMap { Int($0) } ?? 20_000
        print("virtio-fs MMIO fuzz: seed \(seed) (repeat with IRQFD_FUZZ_SEED=\(seed))")
        let fuzzer = try FsDeviceFuzzer()
        let why = fuzzer.fuzz(seed: seed, steps: steps)
        #expect(why == nil, "seed \(seed): \(why ?? "")")
        print(
            "virtio-fs MMIO fuzz: \(steps) accesses, \(fuzzer.device.startCount) starts, "
                + "\(fuzzer.device.resetCount) resets; \(fuzzer.device.counters)")
        // Still works: a host driver through the same entry points, then the guest.
        let device = fuzzer.device
        let vm = fuzzer.vm
        device.configWrite(offset: 0x04, size: 2, value: 6)
        device.configWrite(offset: VirtioFsDevice.msixCapabilityOffset + 2, size: 2, value: 0)
        var driver = FsHostDriver(device: device, memory: vm.memory)
        let ok = driver.initialise()
        #expect(ok, "seed \(seed): \(device.counters)")
        let read = Fuse.readFile(&driver, name: "from-host.bin", size: 1000)
        #expect(read == fuzzer.readData, "seed \(seed)")
        device.writeStatus(0)
        vm.memory.load([UInt8](repeating: 0, count: 0x40000), at: 0)
        let written = (0..<500).map { UInt8(truncatingIfNeeded: $0 &+ Int(seed % 200)) }
        try FsGuest.load(vm, readData: fuzzer.readData, writeData: written)
        let outcome = vm.run(timeout: .seconds(60))
        #expect(outcome == .exited(code: 0), "seed \(seed): \(outcome); \(device.counters)")
        #expect(fuzzer.share.read("from-guest.bin") == written, "seed \(seed)")
    }
}
#endif
