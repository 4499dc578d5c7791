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
                owned = try descriptorsOwned(by: device)
                #expect(owned.count == 3)
                let allOpen = owned.allSatisfy { $0.identity != "closed" && $0.isOpen }
                #expect(allOpen, "round \(round): open while the device lives")
            }
            expectClosedAfterRelease(owned, round: round)
            usleep(2000)  // qemu-storage-daemon notices the closed connection
        }
        #expect(vm.irqfd.freeGsiCount == free)
    }
}
#endif
