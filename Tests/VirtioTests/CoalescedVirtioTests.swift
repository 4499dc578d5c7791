import Foundation
import KVM
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

/// virtio-blk on TinyVM's default (coalescing) partition: once the deferred
/// commit has landed, completions take the kernel path alone.
@Suite(needsKVM) struct CoalescedVirtioTests {
    @Test(arguments: backends)
    func afterTheCommitLandsCompletionsMakeNoInjection(backend: DiskBackendKind) throws {
        let image = try TestImage(sectors: 256)
        let guest = try BlkGuest(backend, image: image)  // coalescing, the default
        guest.configure(batches: 26, perBatch: 4, first: 0, write: false, gated: true)
        guest.vm.start()
        defer { guest.stop() }
        #expect(guest.openGate(through: 1))
        // The commit is bounded (TinyVM: 50 ms); wait well past it.
        usleep(300_000)
        let before = guest.vm.vm.counters.snapshot
        #expect(guest.openGate(through: 26, timeout: .seconds(120)))
        let injected = (guest.vm.vm.counters.snapshot - before).signalMsis
        #expect(
            injected == 0,
            "\(injected) KVM_SIGNAL_MSI for 100 requests after the commit; device \(guest.device.counters)")
    }
}
