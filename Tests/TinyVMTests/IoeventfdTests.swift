#if os(Linux)
import Foundation
import IrqFdLinux
import KVM
import TestSupport
import Testing
import TinyVM

/// KVM_IOEVENTFD on this machine's KVM: a guest write to a bound address
/// signals the eventfd in the kernel and makes no exit to the VMM.
@Suite(needsKVM) struct IoeventfdTests {
    static let address: UInt64 = 0xFE20_3000

    /// Runs the MMIO writer: `count` 16-bit writes of `value` at `address`.
    func run(_ vm: TinyVM, value: UInt16, count: Int) -> Outcome {
        vm.memory.write32(UInt32(Self.address), at: 0x5C8)
        vm.memory.write32(UInt32(value), at: 0x5CC)
        vm.memory.write32(UInt32(count), at: 0x5D0)
        return vm.run(timeout: .seconds(30))
    }

    @Test func aBoundWriteSignalsTheEventAndMakesNoExit() throws {
        let vm = try TinyVM()
        try vm.load(GuestProgram.mmioWriter.image)
        let kick = try EventFD()
        let before = vm.vm.counters.snapshot
        try vm.vm.assignIoeventfd(eventFD: kick.fileDescriptor, address: Self.address, length: 2)
        #expect((vm.vm.counters.snapshot - before).ioeventfdAssigns == 1)
        #expect(run(vm, value: 7, count: 10) == .exited(code: 0))
        #expect(kick.consume() == 10)
        #expect(vm.mmioExits == 0)
        #expect(vm.unhandledAccessCount == 0)
        try vm.vm.deassignIoeventfd(eventFD: kick.fileDescriptor, address: Self.address, length: 2)
        #expect((vm.vm.counters.snapshot - before).ioeventfdDeassigns == 1)
    }

    /// The MMIO writer on a VM of its own, with an eventfd bound to `address` for writes of 1 only.
    func writerMatchingOne() throws -> (vm: TinyVM, kick: EventFD) {
        let vm = try TinyVM()
        try vm.load(GuestProgram.mmioWriter.image)
        let kick = try EventFD()
        try vm.vm.assignIoeventfd(eventFD: kick.fileDescriptor, address: Self.address, length: 2, datamatch: 1)
        return (vm, kick)
    }

    @Test func datamatchSignalsOnlyTheMatchingValue() throws {
        let (matching, kick) = try writerMatchingOne()
        #expect(run(matching, value: 1, count: 3) == .exited(code: 0))
        #expect(kick.consume() == 3)
        #expect(matching.mmioExits == 0)

        let (other, kick2) = try writerMatchingOne()
        #expect(run(other, value: 2, count: 3) == .exited(code: 0))
        #expect(kick2.consume() == 0)
        // Not matched: each write exits to the VMM, where no device claims it.
        #expect(other.mmioExits == 3)
        #expect(other.unhandledAccessCount == 3)
    }

    @Test func afterDeassignWritesExitAgain() throws {
        let vm = try TinyVM()
        try vm.load(GuestProgram.mmioWriter.image)
        let kick = try EventFD()
        let fd = kick.fileDescriptor
        try vm.vm.assignIoeventfd(eventFD: fd, address: Self.address, length: 2, datamatch: 0)
        try vm.vm.deassignIoeventfd(eventFD: fd, address: Self.address, length: 2, datamatch: 0)
        #expect(run(vm, value: 0, count: 4) == .exited(code: 0))
        #expect(kick.consume() == 0)
        #expect(vm.mmioExits == 4)
    }

    @Test func errorsNameTheCall() throws {
        let vm = try TinyVM()
        let kick = try EventFD()
        // Deassigning a binding that does not exist: ENOENT from KVM_IOEVENTFD.
        #expect {
            try vm.vm.deassignIoeventfd(eventFD: kick.fileDescriptor, address: Self.address, length: 2)
        } throws: { error in
            "\(error)".contains("KVM_IOEVENTFD")
        }
        // PIO flag: a port binding is accepted too.
        try vm.vm.assignIoeventfd(eventFD: kick.fileDescriptor, address: 0x510, length: 2, space: .pio)
        try vm.vm.deassignIoeventfd(eventFD: kick.fileDescriptor, address: 0x510, length: 2, space: .pio)
    }
}
#endif
