#if os(Linux)
import Foundation
import TestSupport
import Testing
import TinyVM
import Virtio

/// `irqfd run GUEST.bin --disk IMAGE --disk-backend KIND` through the built
/// command. The run has no way to set the driver guest's parameters (they
/// are below its load address), so the guest runs 0 batches: it walks the
/// capability list, negotiates VERSION_1, sets up its queue and sets
/// DRIVER_OK through the backend the command started, and exits 0 (2, 3 or
/// 4 name the step that failed).
@Suite(needsKVM) struct VirtioRunCommandTests {
    @Test(arguments: backends)
    func irqfdRunWithADiskStartsTheBackendAndTheDriverGuestInitialisesTheDevice(backend: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64) { UInt8(truncatingIfNeeded: $0 % 253) }
        let before = try image.sector(5)
        let guestPath = NSTemporaryDirectory() + "irqfd-virtio-guest-\(UUID().uuidString).bin"
        guard FileManager.default.createFile(atPath: guestPath, contents: Data(GuestProgram.virtioBlk.image)) else {
            throw TestFailure("cannot create \(guestPath)")
        }
        defer { try? FileManager.default.removeItem(atPath: guestPath) }
        let (status, stdout, stderr) = try runProcess(
            try builtExecutable("irqfd"), ["run", guestPath, "--disk", image.path, "--disk-backend", backend.rawValue])
        #expect(status == 0, "exit \(status):\n\(stdout)\(stderr)")
        #expect(stderr.contains("virtio-blk 00:02.0 served by \(backend)"), "\(stderr)")
        #expect(try image.sector(5) == before, "a run of 0 batches leaves the image as it was")
    }
}
#endif
