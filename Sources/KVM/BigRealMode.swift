#if os(Linux)
import CLinuxKVM
package import IrqFdCore

extension VCPU {
    /// Puts the vCPU in big real mode at `ip`: CS base 0 with a 64 KiB limit;
    /// data and stack segments base 0 with 4 GiB limits, so a 16-bit guest's
    /// addr32 accesses reach MMIO below 4 GiB (real mode uses the base and
    /// limit the segment registers' hidden parts hold, which KVM_SET_SREGS
    /// sets directly). RFLAGS has only its fixed bit 1 set (interrupts off);
    /// RSP is `stack`, RBX is `rbx`.
    package func enterBigRealMode(ip: UInt64, stack: UInt64, rbx: UInt64 = 0) throws(SystemCallError) {
        var sregs = try specialRegisters()
        sregs.cs.selector = 0
        sregs.cs.base = 0
        sregs.cs.limit = 0xFFFF
        sregs.cs.type = 0xB
        sregs.cs.present = 1
        sregs.cs.s = 1
        sregs.cs.g = 0
        sregs.cs.db = 0
        func flat(_ segment: inout kvm_segment) {
            segment.selector = 0
            segment.base = 0
            segment.limit = 0xFFFF_FFFF
            segment.type = 3
            segment.present = 1
            segment.s = 1
            segment.g = 1
            segment.db = 0
            segment.unusable = 0
        }
        flat(&sregs.ds)
        flat(&sregs.es)
        flat(&sregs.fs)
        flat(&sregs.gs)
        flat(&sregs.ss)
        try setSpecialRegisters(sregs)
        var regs = Registers()
        regs.rip = ip
        regs.rflags = 2
        regs.rsp = stack
        regs.rbx = rbx
        try setRegisters(regs)
    }
}
#endif
