#if os(Linux)
import Foundation
import GuestPrograms
import Testing
import VhostUser
import Virtio

/// The backends present here: the embedded one when built, qemu-storage-daemon when installed.
let backends: [DiskBackendKind] =
    (BlockBackend.embeddedExecutable() != nil ? [.embedded] : [])
    + (DiskBackendKind.qemuStorageDaemonPath != nil ? [.qemuStorageDaemon] : [])

/// The virtio-blk device needs nothing from TinyVM: attached to
/// `MinimalVMM`, a VMM this target writes on KVM alone, it serves the
/// driver guest (virtio_blk.S) a batch of reads, with notifies bound as
/// KVM_IOEVENTFD doorbells and completions delivered by the VMM's irqfd
/// partition.
@Suite(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm"), "skipped: no /dev/kvm"))
struct VirtioBlkOnAnotherVMMTests {
    /// Says, when qemu-storage-daemon is missing, that its case was not
    /// generated; when it is installed, that it was.
    @Test(
        .enabled(
            if: DiskBackendKind.qemuStorageDaemonPath != nil,
            "skipped: qemu-storage-daemon is not installed (apt-get install --no-install-recommends qemu-system-common)"
        ))
    func theGuestAlsoRunsAgainstQemuStorageDaemon() {
        #expect(backends.contains(.qemuStorageDaemon))
    }

    @Test(arguments: backends)
    func theDriverGuestReadsSectorsThroughADeviceAttachedToAVMMThatIsNotTinyVM(backend kind: DiskBackendKind) throws {
        let sectors = 64
        let path = NSTemporaryDirectory() + "irqfd-embedding-\(UUID().uuidString).img"
        let bytes = (0..<sectors * 512).map { UInt8(truncatingIfNeeded: $0 / 512 * 11 + $0 % 239) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let backend = try BlockBackend(kind: kind, image: path)
        let vmm = try MinimalVMM()
        let device = try VirtioBlkDevice.attach(to: vmm, socketPath: backend.socketPath)
        #expect(vmm.bus.function(device: VirtioBlkDevice.slot) === device)

        var length = 0
        let image = Array(UnsafeBufferPointer(start: guest_virtio_blk(&length), count: length))
        let ram = vmm.ram.memory
        ram.write(image, at: 0x1000)
        // The guest's parameters (virtio_blk.S): 1 batch of 5 reads from sector 3 on queue 0, to vCPU 0.
        for (address, value) in [(0x5C0, 1), (0x5C4, 5), (0x5C8, 3), (0x5CC, 0), (0x5D0, 1), (0x5D4, 0), (0x5DC, 0)] {
            ram.store(UInt32(value), at: UInt64(address))
        }
        ram.store(UInt32(1), at: 0x4F0)  // one vCPU

        let code = vmm.run(timeout: .seconds(60))
        #expect(code == 0, "exit \(String(describing: code)); device \(device.counters); console \(vmm.consoleOutput)")
        #expect(ram.load(UInt32.self, at: 0x5E4) == 5, "requests completed")
        #expect(ram.load(UInt32.self, at: 0x5E8) == 0, "requests failed")
        for j in 0..<5 {
            let sector = 3 + j
            let want = Array(bytes[(sector * 512)..<(sector * 512 + 512)])
            #expect(ram.read(512, at: 0x10_0000 + 512 * UInt64(j)) == want, "request \(j)")
        }
        // Interrupts of MSI-X vector 1 (queue 0; IDT vector 0x41) that vCPU 0 took, by the guest's count.
        #expect(ram.load(UInt32.self, at: 0x8000 + 4 * 0x41) >= 1, "the queue's completion interrupt arrived")
        #expect(device.counters.notifyExits == 0, "every notify was the VMM's doorbell, served in the kernel")
        #expect(device.emulator.routeCount >= 1, "the vector's route was made on the VMM's partition")
        device.writeStatus(0)
        #expect(device.status == 0)
    }
}
#endif
