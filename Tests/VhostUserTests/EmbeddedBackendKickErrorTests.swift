#if os(Linux)
import Foundation
import Glibc
import IrqFdLinux
import KVM
import Testing
import TinyVM
import VhostUser

/// A kick eventfd the back-end accepted can still poll POLLERR: its counter at
/// 2^64 - 1 (fs/eventfd.c, eventfd_poll). write(2) stops at 2^64 - 2, so it
/// takes a front-end that loads its kick there and a kernel signal on top,
/// here the one kicks get in production: a guest's write to a doorbell bound
/// with KVM_IOEVENTFD.
@Suite struct EmbeddedBackendKickErrorTests {
    /// MMIO that no TinyVM device claims: the doorbell.
    static let doorbell: UInt64 = 0xFE20_3000

    /// The back-end stops the queue, says so, and closes the kick; a new kick starts the queue again.
    @Test(.enabled(if: access("/dev/kvm", R_OK | W_OK) == 0, "skipped: /dev/kvm is not usable here"))
    func aKickThatPollsPOLLERRStopsItsQueueWithALogLine() throws {
        let backend = try LoggingBackend()
        let frontend = try backend.negotiatedFrontend()
        let memory = try MemfdGuestMemory(size: 4 << 20)
        try frontend.setMemTable([memory.region])
        var ring = try HandRing(memory: memory, size: 64, base: 0)
        try frontend.setVringNum(queue: 0, size: 64)
        try frontend.setVringAddr(
            queue: 0, descriptor: ring.descriptorTable, available: ring.availableRing, used: ring.usedRing)
        try frontend.setVringBase(queue: 0, index: 0)
        try frontend.setVringCall(queue: 0, descriptor: ring.call.fileDescriptor)
        // Started but not enabled: the back-end does not poll (or read) the kick until SET_VRING_ENABLE.
        try frontend.setVringKick(queue: 0, descriptor: ring.kick.fileDescriptor)
        var loaded: UInt64 = 0xFFFF_FFFF_FFFF_FFFE
        #expect(write(ring.kick.fileDescriptor.rawValue, &loaded, 8) == 8)

        // One guest write to the doorbell: KVM adds 1 in the kernel.
        let vm = try TinyVM()
        try vm.load(GuestProgram.mmioWriter.image)
        try vm.vm.assignIoeventfd(eventFD: ring.kick.fileDescriptor, address: Self.doorbell, length: 2)
        vm.memory.write32(UInt32(Self.doorbell), at: 0x5C8)  // the MMIO writer's address, value and count
        vm.memory.write32(0, at: 0x5CC)
        vm.memory.write32(1, at: 0x5D0)
        #expect(vm.run(timeout: .seconds(30)) == .exited(code: 0))
        var kick = pollfd(fd: ring.kick.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
        #expect(poll(&kick, 1, 0) == 1 && kick.revents == Int16(POLLIN | POLLERR), "revents \(kick.revents)")

        // Enabled, the queue's kick is polled: POLLERR stops the queue, and the back-end closes its kick.
        let pid = backend.process.processIdentifier
        let before = BackendProcessState(pid).descriptors
        try frontend.setVringEnable(queue: 0, enabled: true)
        let deadline = ContinuousClock.now + .seconds(5)
        while BackendProcessState(pid).descriptors != before - 1, ContinuousClock.now < deadline { usleep(2_000) }
        #expect(BackendProcessState(pid).descriptors == before - 1, "the back-end still holds the kick")

        // SET_VRING_KICK with a new eventfd starts the queue again and serves what is available.
        let header = ring.end + 64
        let status = header + 32
        memory.write(blockHeader(type: 8, sector: 0), at: header)
        memory.store(UInt8(0xFF), at: status)
        ring.descriptor(0, address: header, length: 16, flags: next, next: 1)
        ring.descriptor(1, address: status, length: 1, flags: writeOnly)
        ring.offer(0)
        let fresh = try HostEventFD()
        try frontend.setVringKick(queue: 0, descriptor: fresh.fileDescriptor)
        #expect(ring.waitUsed(1))
        #expect(memory.load(UInt8.self, at: status) == 0)
        frontend.close()
        let lines = backend.lines()
        #expect(lines.contains { $0.contains("queue 0: kick descriptor reports 0x9; queue stopped") }, "\(lines)")
    }
}
#endif
