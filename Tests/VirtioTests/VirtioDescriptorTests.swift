#if os(Linux)
import Foundation
import TestSupport
import Testing
import TinyVM
import Virtio

@Suite(needsKVM) struct VirtioDescriptorTests {
    /// Start, I/O, reset, release, twenty times: each device's own kick and
    /// call eventfds and its vhost-user socket are closed afterwards, and the
    /// VM's free GSIs are as they were.
    @Test(arguments: backends)
    func deviceLifecyclesCloseTheDescriptorsTheyOpened(backend kind: DiskBackendKind) throws {
        let image = try TestImage(sectors: 64)
        let vm = try TinyVM()
        let free = vm.irqfd.freeGsiCount
        let backend = try BlockBackend(kind: kind, image: image.path)
        for round in 0..<20 {
            var owned: [OwnedDescriptor] = []
            do {
                let device = try hostLifecycle(vm: vm, socketPath: backend.socketPath, round: round)
                let socket = try #require(device.frontend.socket)
                owned = ([socket] + device.ownedDescriptors).map { OwnedDescriptor($0.rawValue) }
                #expect(owned.count == 3)
                let allOpen = owned.allSatisfy { $0.identity != "closed" && $0.isOpen }
                #expect(allOpen, "round \(round): open while the device lives")
            }
            // The device's deinit closes them: here, or on its watcher thread just
            // after if that thread held the device at this moment (it does for the
            // length of one call): allow 2 s. The records pin each eventfd, so a
            // new eventfd on a freed number cannot pass for it.
            _ = eventually(.seconds(2)) { !owned.contains(where: \.isOpen) }
            for d in owned { #expect(!d.isOpen, "round \(round): descriptor \(d.fd) still open 2 s after release") }
            usleep(2000)  // qemu-storage-daemon notices the closed connection
        }
        #expect(vm.irqfd.freeGsiCount == free)
    }
}
#endif
