#if os(Linux)
import Foundation
import KVM
import MSIX
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

/// Where a virtio-blk completion's interrupt goes: each queue's own vector
/// on the vCPU it targets, none under the function mask (held in the PBA,
/// one on unmask), and the other vCPU once the vector is retargeted, all
/// with no vhost-user message.
@Suite(needsKVM) struct VirtioInterruptRoutingTests {
    typealias L = VirtioBlkGuestLayout

    @Test(arguments: backends)
    func twoQueuesTwoVectorsEachVCPUTakesItsQueuesInterrupts(backend: DiskBackendKind) throws {
        // Queue 1's sectors start at 0x800.
        let image = try TestImage(sectors: 0x820) { UInt8(truncatingIfNeeded: $0 / 512 * 5 + $0 % 241) }
        let guest = try BlkGuest(backend, image: image, cpus: 2, queues: 2)
        guest.configure(batches: 4, perBatch: 4, first: 0, write: false, queues: 2, destinations: [0, 1])
        let outcome = guest.vm.run(timeout: .seconds(120))
        #expect(
            outcome == .exited(code: 0),
            "\(outcome); device \(guest.device.counters); backend error \(String(describing: guest.device.lastBackendError))"
        )
        #expect(guest.completed == 32, "4 batches of 4 requests on each of 2 queues")
        #expect(guest.failed == 0)
        #expect(guest.device.counters.notifyExits == 0)
        #expect(guest.device.driverFeatures & VirtioBlkDevice.Feature.multiQueue != 0 || guest.device.queueCount == 2)
        // Queue 0 (MSI-X vector 1) to vCPU 0, queue 1 (vector 2) to vCPU 1, and never the other way.
        let seen =
            "cpu0 v1 \(guest.interrupts(cpu: 0, msix: 1)) v2 \(guest.interrupts(cpu: 0, msix: 2)); cpu1 v1 \(guest.interrupts(cpu: 1, msix: 1)) v2 \(guest.interrupts(cpu: 1, msix: 2)); route events \(guest.device.emulator.routeCount)"
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
        defer {
            guest.vm.stop()
            _ = guest.vm.wait()
        }
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
#endif
