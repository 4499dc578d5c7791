#if os(Linux)
import Foundation
import KVM
import MSIX
import PCI
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

/// The backends a test runs against: the embedded one whenever it is built
/// (branch h-vhost adds it), qemu-storage-daemon when installed.
let backends: [DiskBackendKind] =
    (BlockBackend.embeddedExecutable() != nil ? [.embedded] : [])
    + (DiskBackendKind.qemuStorageDaemonPath != nil ? [.qemuStorageDaemon] : [])
let qsdInstalled = Testing.ConditionTrait.enabled(
    if: DiskBackendKind.qemuStorageDaemonPath != nil,
    "skipped: qemu-storage-daemon is not installed (apt-get install --no-install-recommends qemu-system-common)")

/// A VM with the virtio-blk device served by `backend`, running the driver guest.
final class BlkGuest {
    let image: TestImage
    let backend: BlockBackend
    let vm: TinyVM
    let device: VirtioBlkDevice
    typealias L = VirtioBlkGuestLayout

    init(
        _ kind: DiskBackendKind, image: TestImage, cpus: Int = 1, queues: Int = 1, delivery: InterruptDelivery = .irqfd,
        coalescesCommits: Bool = true
    ) throws {
        self.image = image
        backend = try BlockBackend(kind: kind, image: image.path, queues: queues)
        vm = try TinyVM(.init(cpus: cpus, coalescesCommits: coalescesCommits))
        device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath, queues: queues, delivery: delivery)
        try vm.load(GuestProgram.virtioBlk.image)
    }

    func configure(
        batches: Int, perBatch: Int, first: Int, write: Bool, queues: Int = 1, destinations: [Int] = [0, 0],
        gated: Bool = false
    ) {
        let m = vm.memory
        m.write32(UInt32(batches), at: L.batches)
        m.write32(UInt32(perBatch), at: L.requestsPerBatch)
        m.write32(UInt32(first), at: L.firstSector)
        m.write32(write ? 1 : 0, at: L.type)
        m.write32(UInt32(queues), at: L.queues)
        m.write32(UInt32(destinations[0]), at: L.destination(queue: 0))
        m.write32(UInt32(destinations[1]), at: L.destination(queue: 1))
        m.write32(gated ? 1 : 0, at: L.gated)
    }

    /// Stops the guest and waits for its vCPUs to end.
    func stop() {
        vm.stop()
        _ = vm.wait()
    }

    /// Opens the gate of a `gated` guest through batch `batch`; true once the guest has finished that batch.
    func openGate(through batch: UInt32, timeout: Duration = .seconds(10)) -> Bool {
        vm.memory.write32(batch, at: L.gate)
        return vm.waitUntil(timeout: timeout) { self.vm.memory.read32(at: L.batchesDone) == batch }
    }

    var completed: Int { Int(vm.memory.read32(at: L.completed)) }
    var failed: Int { Int(vm.memory.read32(at: L.failed)) }
    func interrupts(cpu: Int, msix v: Int) -> Int {
        Int(vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: L.idtVector(msix: v))))
    }
}

/// A recognisable byte of request j's data.
func pattern(_ j: Int, _ i: Int) -> UInt8 { UInt8(truncatingIfNeeded: j &* 31 &+ i &* 7 &+ 1) }

@Suite(needsKVM) struct VirtioBlkGuestTests {
    @Test(arguments: backends)
    func theGuestWritesSectorsAndTheImageHasThem(backend: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64)
        let guest = try BlkGuest(backend, image: image)
        guest.configure(batches: 2, perBatch: 4, first: 8, write: true)
        for j in 0..<8 {
            guest.vm.memory.load((0..<512).map { pattern(j, $0) }, at: BlkGuest.L.buffer(queue: 0, request: j))
        }
        let outcome = guest.vm.run(timeout: .seconds(60))
        #expect(
            outcome == .exited(code: 0),
            "\(outcome); device \(guest.device.counters); backend error \(String(describing: guest.device.lastBackendError))"
        )
        #expect(guest.completed == 8)
        #expect(guest.failed == 0)
        #expect(guest.device.counters.notifyExits == 0)
        guest.device.writeStatus(0)
        for j in 0..<8 {
            #expect(try image.sector(8 + j) == (0..<512).map { pattern(j, $0) }, "sector \(8 + j)")
        }
        #expect(try image.sector(7) == [UInt8](repeating: 0, count: 512))
    }

    @Test(arguments: backends)
    func theGuestReadsSectorsTheHostWrote(backend: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64) { UInt8(truncatingIfNeeded: $0 / 512 * 13 + $0 % 251) }
        let guest = try BlkGuest(backend, image: image)
        guest.configure(batches: 1, perBatch: 5, first: 3, write: false)
        let outcome = guest.vm.run(timeout: .seconds(60))
        #expect(outcome == .exited(code: 0), "\(outcome); device \(guest.device.counters)")
        for j in 0..<5 {
            let got = guest.vm.memory.bytes(at: BlkGuest.L.buffer(queue: 0, request: j), count: 512)
            #expect(got == (try image.sector(3 + j)), "request \(j)")
        }
    }

    @Test(arguments: backends)
    func aHundredRequestsSeveralInFlightAllSucceedWithAnInterruptPerBatch(backend: DiskBackendKind) throws {
        let image = try TestImage(sectors: 256)
        // The kernel path alone: on a coalescing partition the relay injects for a vector
        // whose entry still waits for its commit (CoalescedGuestTests covers that).
        let guest = try BlkGuest(backend, image: image, coalescesCommits: false)
        guest.configure(batches: 25, perBatch: 4, first: 0, write: false)
        let before = guest.vm.vm.counters.snapshot
        let outcome = guest.vm.run(timeout: .seconds(120))
        #expect(outcome == .exited(code: 0), "\(outcome); device \(guest.device.counters)")
        #expect(guest.completed == 100)
        #expect(guest.failed == 0)
        #expect(guest.interrupts(cpu: 0, msix: 1) >= 25)
        #expect(guest.device.counters.notifyExits == 0)
        #expect((guest.vm.vm.counters.snapshot - before).signalMsis == 0, "irqfd delivery made no injection")
    }

    @Test(arguments: backends)
    func aMaskedVectorHoldsCompletionsInThePBAAndUnmaskDeliversOne(backend: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64)
        let guest = try BlkGuest(backend, image: image)
        // A third batch never opens: the guest waits at the gate with interrupts on.
        guest.configure(batches: 3, perBatch: 3, first: 0, write: false, gated: true)
        guest.vm.start()
        defer { guest.stop() }
        #expect(guest.openGate(through: 1))
        // Queue 0's vector is 1: mask it in the table (vector control, BAR1 + 16 + 12).
        let emulator = guest.device.emulator
        let messages = guest.device.frontend.messagesSent
        usleep(50_000)  // a late queue-start signal (qemu-storage-daemon sends one) lands first
        let afterBatch = guest.interrupts(cpu: 0, msix: 1)
        emulator.write(bar: 1, offset: 16 + 12, size: 4, value: 1)
        guest.vm.memory.write32(2, at: BlkGuest.L.gate)
        // The device area's idx (queue 0's used ring at 0x22000 + 2) reaches 6:
        // the backend completed batch 2, and the guest sleeps until it hears.
        #expect(guest.vm.waitUntil { guest.vm.memory.read32(at: 0x22000) >> 16 == 6 }, "the backend completes batch 2")
        usleep(50_000)
        #expect(guest.interrupts(cpu: 0, msix: 1) == afterBatch, "no interrupt while masked")
        #expect(emulator.read(bar: 1, offset: 0x800, size: 8) & 0b10 != 0, "PBA bit 1 set")
        emulator.write(bar: 1, offset: 16 + 12, size: 4, value: 0)
        #expect(guest.vm.waitUntil { guest.interrupts(cpu: 0, msix: 1) == afterBatch + 1 })
        #expect(guest.vm.waitUntil { guest.completed == 6 }, "the guest woke and saw batch 2")
        usleep(50_000)
        #expect(guest.interrupts(cpu: 0, msix: 1) == afterBatch + 1, "exactly one")
        #expect(guest.device.frontend.messagesSent == messages, "no vhost-user message for mask/unmask")
    }
}
#endif

#if os(Linux)
@Suite(needsKVM, qsdInstalled) struct VirtioDeliveryTests {
    /// What the guest saw: completions, failures and the bytes it read.
    struct Seen: Equatable {
        var completed: Int
        var failed: Int
        var data: [UInt8]
        var interruptsAtLeastBatches: Bool
    }

    func run(_ delivery: InterruptDelivery) throws -> Seen {
        let image = try TestImage(sectors: 64) { UInt8(truncatingIfNeeded: $0 * 7 + $0 / 512) }
        let guest = try BlkGuest(.qemuStorageDaemon, image: image, delivery: delivery)
        guest.configure(batches: 5, perBatch: 4, first: 2, write: false)
        let outcome = guest.vm.run(timeout: .seconds(60))
        #expect(outcome == .exited(code: 0), "\(delivery): \(outcome)")
        return Seen(
            completed: guest.completed, failed: guest.failed,
            data: guest.vm.memory.bytes(at: BlkGuest.L.buffer(queue: 0, request: 0), count: 20 * 512),
            interruptsAtLeastBatches: guest.interrupts(cpu: 0, msix: 1) >= 5)
    }

    @Test func everyDeliveryModeGivesTheGuestTheSameResults() throws {
        let irqfd = try run(.irqfd)
        #expect(irqfd.completed == 20 && irqfd.failed == 0 && irqfd.interruptsAtLeastBatches)
        #expect(try run(.relay) == irqfd)
        #expect(try run(.userspace) == irqfd)
    }
}
#endif
