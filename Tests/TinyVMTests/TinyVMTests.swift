#if os(Linux)
import Foundation
import KVM
import TestSupport
import Testing
import TinyVM

@Suite(needsKVM) struct TinyVMContractTests {
    @Test func helloPrintsOnEveryVCPUAndExitsWith42() throws {
        let vm = try TinyVM(.init(cpus: 2))
        try vm.load(GuestProgram.hello.image)
        let outcome = vm.run(timeout: .seconds(30))
        #expect(outcome == .exited(code: 42))
        #expect(vm.consoleOutput == "hello from vCPU 0\nhello from vCPU 1\n")
    }

    @Test func anUnhandledExceptionIsAFaultNamingTheVector() throws {
        let vm = try TinyVM()
        try vm.load(GuestProgram.fault.image)
        let outcome = vm.run(timeout: .seconds(30))
        guard case .fault(let message) = outcome else {
            Issue.record("expected a fault, got \(outcome)")
            return
        }
        #expect(message.contains("exception vector 6"))
        #expect(outcome.exitStatus == 125)
    }

    @Test func aSpinningGuestTimesOut() throws {
        let vm = try TinyVM()
        try vm.load(GuestProgram.spin.image)
        let start = ContinuousClock.now
        let outcome = vm.run(timeout: .milliseconds(300))
        #expect(outcome == .timedOut(.milliseconds(300)))
        #expect(outcome.exitStatus == 124)
        #expect(ContinuousClock.now - start < .seconds(10))
    }

    @Test func imagesThatCannotLoadAreRejected() throws {
        let vm = try TinyVM(.init(memorySize: 1 << 20))
        #expect(throws: TinyVMError.image("the image is empty")) { try vm.load([]) }
        #expect(throws: TinyVMError.self) { try vm.load([UInt8](repeating: 0x90, count: 1 << 20)) }
        #expect(throws: TinyVMError.configuration("--cpus must be 1...8, not 9")) { try TinyVM(.init(cpus: 9)) }
    }

    @Test func theEntryStateIsBigRealMode() throws {
        let vm = try TinyVM(.init(cpus: 2))
        for (index, vcpu) in vm.vcpus.enumerated() {
            let regs = try vcpu.registers()
            let sregs = try vcpu.specialRegisters()
            #expect(regs.rip == 0x1000 && regs.rbx == UInt64(index) && regs.rsp == 0x7000 - 0x800 * UInt64(index))
            #expect(sregs.cr0 & 1 == 0, "real mode")
            #expect(sregs.cs.base == 0 && sregs.cs.selector == 0)
            #expect(sregs.ds.limit == 0xFFFF_FFFF && sregs.ss.limit == 0xFFFF_FFFF && sregs.ds.base == 0)
        }
    }
}
#endif
