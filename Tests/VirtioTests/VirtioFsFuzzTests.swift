#if os(Linux)
import Foundation
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

    /// MSI data the guest's handlers take: vector 0x20..0xFF, fixed delivery.
    static func tame(_ address: UInt64, _ size: Int, _ value: UInt64) -> UInt64 {
        guard address >= VirtioFsDevice.msixBase, address < VirtioFsDevice.msixBase + UInt64(VirtioFsDevice.pbaOffset)
        else { return value }
        var value = value
        for byte in 0..<size {
            let shift = UInt64(8 * byte)
            switch (address &+ UInt64(byte)) % 16 {
            case 8: if (value >> shift) & 0xFF < 0x20 { value |= 0x20 << shift }
            case 9: value &= ~(0x07 << shift)
            default: break
            }
        }
        return value
    }

    /// A ring address: usually aligned inside RAM (zeroed there: the rings are
    /// empty), sometimes anything.
    func ringAddress(_ r: inout SplitMix64) -> UInt64 {
        switch r.next() % 4 {
        case 0: r.next()
        case 1: UInt64(vm.memory.size) - UInt64(r.next() % 64) * 16
        default: (0x40000 + r.next() % UInt64(vm.memory.size - 0x50000)) & ~0xF
        }
    }

    func step(_ r: inout SplitMix64) {
        let width = [1, 2, 4, 8][Int(r.next() % 4)]
        let base = VirtioFsDevice.virtioBase
        func common(_ offset: UInt64, _ size: Int, _ value: UInt64) {
            device.write(address: base + offset, size: size, value: value)
        }
        switch r.next() % 14 {
        case 0, 1:  // anywhere in BAR4 (and just past it), any width, any alignment
            let address = base + r.next() % (VirtioFsDevice.virtioSize + 64)
            if r.next() % 2 == 0 {
                _ = device.read(address: address, size: width)
            } else {
                device.write(address: address, size: width, value: r.next())
            }
        case 2:  // BAR1: MSI-X table and PBA
            let address = VirtioFsDevice.msixBase + r.next() % (VirtioFsDevice.msixSize + 64)
            if r.next() % 2 == 0 {
                _ = device.read(address: address, size: width)
            } else {
                device.write(address: address, size: width, value: Self.tame(address, width, r.next()))
            }
        case 3:  // configuration space, mostly keeping memory decoding and bus mastering on
            let offset =
                r.next() % 3 == 0 ? VirtioFsDevice.msixCapabilityOffset + Int(r.next() % 12) : Int(r.next() % 260)
            let size = [1, 2, 4][Int(r.next() % 3)]
            var value = UInt32(truncatingIfNeeded: r.next())
            if offset <= 0x04, offset + size > 0x04, r.next() % 8 != 0 {
                value |= UInt32(0x06) << (8 * UInt32(4 - offset))
            }
            if r.next() % 2 == 0 {
                _ = device.configRead(offset: offset, size: size)
            } else {
                device.configWrite(offset: offset, size: size, value: value)
            }
        case 4, 5:  // device_status: the steps, resets, and anything
            let steps: [UInt64] = [0, 1, 3, 0x0B, 0x0F, 0x8F, 0x4F]
            common(0x14, 1, r.next() % 4 == 0 ? r.next() & 0xFF : steps[Int(r.next() % UInt64(steps.count))])
        case 6:  // feature words (VERSION_1 is bit 0 of word 1; fs offers no feature bit 0)
            common([0x00, 0x08][Int(r.next() % 2)], 4, r.next() % 3)
            common(0x0C, 4, r.next() % 2 == 0 ? r.next() : [0, 1][Int(r.next() % 2)])
        case 7:  // queue_select (2 does not exist), queue_size, vectors
            common(0x16, 2, r.next() % 4)
            common(0x18, 2, r.next() % 2 == 0 ? 1 << (r.next() % 10) : r.next() & 0xFFFF)
            let vectors: [UInt64] = [0, 1, 2, 3, 0xFFFF, r.next() & 0xFFFF]
            common(r.next() % 2 == 0 ? 0x10 : 0x1A, 2, vectors[Int(r.next() % UInt64(vectors.count))])
        case 8, 9:  // ring addresses, whole or in halves, then sometimes queue_enable
            let field: UInt64 = [0x20, 0x28, 0x30][Int(r.next() % 3)]
            let address = ringAddress(&r)
            if r.next() % 2 == 0 {
                common(field, 8, address)
            } else {
                common(field, 4, address & 0xFFFF_FFFF)
                common(field + 4, 4, address >> 32)
            }
            if r.next() % 2 == 0 { common(0x1C, 2, r.next() % 4 == 0 ? r.next() & 0xFFFF : 1) }
        case 10:  // notifies: right, wrong queue, wrong value, wrong width
            let q = r.next() % 3
            device.write(
                address: VirtioFsDevice.notifyAddress(queue: Int(q)) + (r.next() % 8 == 0 ? 1 : 0),
                size: r.next() % 4 == 0 ? width : 2, value: r.next() % 3 == 0 ? r.next() : q)
        case 11:  // the device configuration: the tag and num_request_queues, read and (read-only) written
            let address = base + VirtioFsDevice.deviceOffset + r.next() % 48
            if r.next() % 2 == 0 {
                _ = device.read(address: address, size: width)
            } else {
                device.write(address: address, size: width, value: r.next())
            }
        case 12:  // a whole initialisation with random values on the way, both queues
            common(0x14, 1, 0)
            common(0x14, 1, 1)
            common(0x14, 1, 3)
            common(0x08, 4, 0)
            common(0x0C, 4, r.next() % 4 == 0 ? r.next() & 0xFFFF_FFFF : 0)
            common(0x08, 4, 1)
            common(0x0C, 4, r.next() % 4 == 0 ? r.next() & 0xFFFF_FFFF : 1)
            common(0x14, 1, 0x0B)
            for q in 0..<2 {
                common(0x16, 2, r.next() % 5 == 0 ? r.next() % 3 : UInt64(q))
                common(0x18, 2, r.next() % 4 == 0 ? r.next() & 0xFFFF : 1 << (2 + r.next() % 7))
                common(0x1A, 2, [0, 1, 2, 0xFFFF][Int(r.next() % 4)])
                common(0x20, 8, ringAddress(&r))
                common(0x28, 8, ringAddress(&r))
                common(0x30, 8, ringAddress(&r))
                common(0x1C, 2, 1)
            }
            if r.next() % 8 != 0 { common(0x14, 1, 0x0F) }
        default:  // ISR and common configuration reads
            _ = device.read(
                address: base + (r.next() % 2 == 0 ? VirtioFsDevice.isrOffset : r.next() % 0x40), size: width)
        }
    }

    /// What must hold after any access, or why it does not.
    func incoherence() -> String? {
        let status = device.status
        for q in 0..<2 where device.isRunning(queue: q) && status & VirtioStatus.driverOK == 0 {
            return "queue \(q) runs without DRIVER_OK (status 0x\(String(status, radix: 16)))"
        }
        if status & VirtioStatus.driverOK != 0, status & VirtioStatus.featuresOK == 0 {
            return "DRIVER_OK without FEATURES_OK"
        }
        if let error = device.lastBackendError { return "virtiofsd refused the device or went away: \(error)" }
        if !backend.isRunning { return "virtiofsd exited" }
        return nil
    }

    func fuzz(seed: UInt64, steps: Int) -> String? {
        var r = SplitMix64(seed: seed)
        for index in 0..<steps {
            step(&r)
            if index % 64 == 0, let why = incoherence() { return "step \(index): \(why)" }
        }
        return incoherence()
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
