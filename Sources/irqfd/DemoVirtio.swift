import Foundation
import KVM
import PCI
import TinyVM
import Virtio

/// The demo's virtio-blk section: a guest reads and writes sectors through a
/// vhost-user backend; notifies are ioeventfds and completions irqfd routes,
/// so the VMM handles no notify exit and injects nothing; a masked vector's
/// completions are held in the PBA and delivered on unmask, with no
/// vhost-user message for either.
struct VirtioDemo {
    let delivery: InterruptDelivery
    typealias L = VirtioBlkGuestLayout

    struct Failure: Error { var message: String }

    func run() throws {
        let kind = DiskBackendKind.preferred
        let path = NSTemporaryDirectory() + "irqfd-demo-\(getpid()).img"
        var image = [UInt8](repeating: 0, count: 64 * 512)
        for i in image.indices { image[i] = UInt8(truncatingIfNeeded: i / 512 &* 17 &+ i % 256) }
        guard FileManager.default.createFile(atPath: path, contents: Data(image)) else {
            throw Failure(message: "cannot create \(path)")
        }
        defer { try? FileManager.default.removeItem(atPath: path) }
        let backend: BlockBackend
        do { backend = try BlockBackend(kind: kind, image: path) } catch { throw Failure(message: "\(error)") }
        defer { backend.stop() }
        print(
            """

            virtio-blk: PCI 00:02.0 (modern virtio 1.x), a 32 KiB image served by \(kind) over vhost-user.
            Notifies are KVM_IOEVENTFDs on the queue's kick eventfd; completions signal the MSI-X vector's route event.

            """)
        // 1. The guest writes sectors 8..<12; the host reads the image file.
        do {
            let (vm, device) = try machine(backend)
            vm.memory.write32(1, at: L.batches)
            vm.memory.write32(4, at: L.requestsPerBatch)
            vm.memory.write32(8, at: L.firstSector)
            vm.memory.write32(1, at: L.type)
            vm.memory.write32(1, at: L.queues)
            for j in 0..<4 {
                vm.memory.load([UInt8](repeating: UInt8(0xA0 + j), count: 512), at: L.buffer(queue: 0, request: j))
            }
            let outcome = vm.run(timeout: .seconds(60))
            device.writeStatus(0)
            let file = [UInt8](FileManager.default.contents(atPath: path) ?? Data())
            var written = file.count >= 12 * 512
            for j in 0..<4 where written {
                let sector = file[((8 + j) * 512)..<((9 + j) * 512)]
                written = sector.allSatisfy { $0 == UInt8(0xA0 + j) }
            }
            line(
                "guest writes sectors 8-11 (4 requests in flight)",
                "\(outcome); the image on the host has them: \(written ? "yes" : "NO")")
        }
        // 2. The guest reads: batch 1 live, batch 2 while the vector is masked.
        let (vm, device) = try machine(backend)
        vm.memory.write32(3, at: L.batches)  // the third never opens: the guest waits with interrupts on
        vm.memory.write32(4, at: L.requestsPerBatch)
        vm.memory.write32(0, at: L.firstSector)
        vm.memory.write32(0, at: L.type)
        vm.memory.write32(1, at: L.queues)
        vm.memory.write32(1, at: L.gated)
        let counters = vm.vm.counters.snapshot
        vm.start()
        defer {
            vm.stop()
            vm.wait()
            device.disconnect()  // the backend stops next: not a backend lost
        }
        let interrupts = {
            Int(vm.memory.read32(at: InterruptCounterLayout.count(cpu: 0, vector: L.idtVector(msix: 1))))
        }
        vm.memory.write32(1, at: L.gate)
        guard vm.waitUntil(timeout: .seconds(30), { vm.memory.read32(at: L.batchesDone) == 1 }) else {
            throw Failure(message: "the guest did not finish its first batch: \(device.counters)")
        }
        usleep(50_000)
        let read = vm.memory.bytes(at: L.buffer(queue: 0, request: 0), count: 4 * 512)
        line(
            "guest reads sectors 0-3 (4 requests in flight)",
            "data matches the image: \(read == Array(image[0..<2048]) ? "yes" : "NO"); \(interrupts()) interrupt(s) on vector 1 (IDT 0x41)"
        )
        let messages = device.frontend.messagesSent
        let before = interrupts()
        device.emulator.write(bar: 1, offset: 16 + 12, size: 4, value: 1)
        line(
            "VMM masks vector 1 (vector control bit 0)",
            "vhost-user messages: \(device.frontend.messagesSent - messages)")
        vm.memory.write32(2, at: L.gate)
        _ = vm.waitUntil(timeout: .seconds(30)) { vm.memory.read32(at: 0x22000) >> 16 == 8 }
        usleep(50_000)
        let pba = device.emulator.read(bar: 1, offset: 0x800, size: 8)
        line(
            "backend completes batch 2 (4 reads)",
            "held: \(interrupts() - before) interrupts; PBA 0b\(String(pba, radix: 2)): vector 1 is pending")
        device.emulator.write(bar: 1, offset: 16 + 12, size: 4, value: 0)
        _ = vm.waitUntil(timeout: .seconds(10)) { vm.memory.read32(at: L.completed) == 8 }
        usleep(50_000)
        line(
            "VMM unmasks vector 1",
            "the held completions arrived as \(interrupts() - before) interrupt; vhost-user messages for mask+unmask: \(device.frontend.messagesSent - messages)"
        )
        let spent = vm.vm.counters.snapshot - counters
        line(
            "VMM work on the I/O path",
            "\(device.counters.notifyExits) notify exits, \(spent.signalMsis) injections (KVM_SIGNAL_MSI)")
        print(
            "Backend: \(kind); requests completed by the guest: \(vm.memory.read32(at: L.completed)), failed: \(vm.memory.read32(at: L.failed))."
        )
    }

    private func machine(_ backend: BlockBackend) throws -> (TinyVM, VirtioBlkDevice) {
        do {
            // Synchronous commits, as in the MSI-X demo: the I/O path is shown with every
            // entry in the kernel (a coalescing partition relays for its first few ms).
            let vm = try TinyVM(.init(cpus: 1, coalescesCommits: false))
            let device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath, delivery: delivery)
            try vm.load(GuestProgram.virtioBlk.image)
            return (vm, device)
        } catch {
            throw Failure(message: "cannot start the virtio-blk guest: \(error)")
        }
    }

    private func line(_ left: String, _ right: String) {
        print(left.padding(toLength: 56, withPad: " ", startingAt: 0) + right)
    }
}
