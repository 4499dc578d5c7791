#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// Guest RAM is shared with vhost-user backends, which are not trusted: its
/// memfd is sealed so that none of them can resize it under the running guest.
@Suite(needsKVM) struct GuestMemorySealTests {
    /// The backend's view: the guest RAM descriptor as SET_MEM_TABLE delivers
    /// it (SCM_RIGHTS over a Unix socket). Its ftruncate(2) to 0 and to twice
    /// the size both fail with EPERM, the seals read back as fixed-size, and
    /// the guest goes on running and taking interrupts.
    @Test func aBackendCannotResizeGuestRAMAndTheGuestKeepsRunning() throws {
        let guest = try CountingGuest(cpus: 1)
        let memory = guest.vm.memory
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("irqfd-seal-\(getpid()).sock").path
        let listener = try UnixSocket.listen(at: path)
        let backend = try UnixSocket.connect(to: path)
        let frontend = try listener.accept()
        try frontend.send([1], passing: memory.descriptor)
        let (bytes, received) = try backend.receiveWithDescriptor(maximum: 1)
        let ram = try #require(received, "the guest RAM descriptor arrived")
        defer { try? ram.close() }
        #expect(bytes == [1])

        #expect(try MemfdSeals.of(ram) == [.shrink, .grow, .seal])
        #expect(ftruncate(ram.rawValue, 0) == -1 && errno == EPERM, "shrinking guest RAM is refused")
        #expect(
            ftruncate(ram.rawValue, off_t(memory.size * 2)) == -1 && errno == EPERM, "growing guest RAM is refused")
        var status = stat()
        #expect(fstat(ram.rawValue, &status) == 0 && Int(status.st_size) == memory.size)

        let route = try guest.irqfd.newRoute()
        try route.setMsi(MsiMessage(destination: 0, vector: 0x44))
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x44, count: 1), "the guest still takes interrupts")
        guest.expectAlive()
    }
}
#endif
