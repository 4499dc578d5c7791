#if os(Linux)
public import CLinuxKVM
import Glibc
public import IrqFdCore
import SystemPackage

// The state a running vCPU carries that its successor, a vCPU in another VM
// over the same guest RAM, needs to go on where it stopped. KVM's API
// (Documentation/virt/kvm/api.rst) has one ioctl per piece; these are they,
// plus the order `VCPUState` restores them in.

extension VCPU {
    /// The vCPU descriptor, for code that must pass it to the kernel itself
    /// (the benchmark's raw floor). Borrowed: this object owns it.
    public var rawDescriptor: Int32 { descriptor.raw }

    /// Exceptions, interrupts and NMIs KVM holds for the vCPU outside its
    /// registers (`struct kvm_vcpu_events`): one being injected, an NMI
    /// pending or masked, the interrupt shadow after STI or MOV SS, SMM.
    public typealias Events = kvm_vcpu_events
    /// The x87 and SSE state (`struct kvm_fpu`).
    public typealias FPU = kvm_fpu

    /// KVM_GET_VCPU_EVENTS. KVM fills `flags` with what the answer holds
    /// (KVM_VCPUEVENT_VALID_*), so the value can be written back as it is.
    public func events() throws(SystemCallError) -> Events {
        try get("KVM_GET_VCPU_EVENTS", IRQFD_KVM_GET_VCPU_EVENTS, kvm_vcpu_events())
    }

    /// KVM_SET_VCPU_EVENTS: the fields `events.flags` marks valid replace KVM's.
    public func setEvents(_ events: Events) throws(SystemCallError) {
        try set("KVM_SET_VCPU_EVENTS", IRQFD_KVM_SET_VCPU_EVENTS, events)
    }

    /// KVM_GET_FPU.
    public func fpu() throws(SystemCallError) -> FPU {
        try get("KVM_GET_FPU", IRQFD_KVM_GET_FPU, kvm_fpu())
    }

    /// KVM_SET_FPU.
    public func setFPU(_ fpu: FPU) throws(SystemCallError) {
        try set("KVM_SET_FPU", IRQFD_KVM_SET_FPU, fpu)
    }
}

extension VirtualMachine {
    /// `struct kvm_clock_data`: the guest's kvmclock, in nanoseconds.
    public typealias Clock = kvm_clock_data

    /// KVM_GET_CLOCK: the VM's kvmclock now.
    public func clock() throws(SystemCallError) -> Clock {
        var data = kvm_clock_data()
        _ = try ioctl("KVM_GET_CLOCK") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_GET_CLOCK, &data) }
        return data
    }

    /// KVM_SET_CLOCK: sets the VM's kvmclock to `clock.clock` nanoseconds, so
    /// a guest moved to this VM reads its clock on from where it stopped. The
    /// flags are not passed on: they describe the old host's reading.
    public func setClock(_ clock: Clock) throws(SystemCallError) {
        var data = kvm_clock_data()
        data.clock = clock.clock
        _ = try ioctl("KVM_SET_CLOCK") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_SET_CLOCK, &data) }
    }
}

extension KVMSystem {
    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU
    /// (`struct kvm_msr_list`, built by hand: its flexible array does not import).
    public func msrIndexList() throws(SystemCallError) -> [UInt32] {
        var capacity = 256
        while true {
            var words = [UInt32](repeating: 0, count: 1 + capacity)
            words[0] = UInt32(capacity)
            do throws(SystemCallError) {
                _ = try retryingIoctl("KVM_GET_MSR_INDEX_LIST") {
                    words.withUnsafeMutableBytes {
                        irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_GET_MSR_INDEX_LIST, $0.baseAddress!)
                    }
                }
                return Array(words[1..<(1 + Int(words[0]))])
            } catch {
                // E2BIG: KVM wrote the count it needs into nmsrs.
                guard error.errno == .argListTooLong, Int(words[0]) > capacity else { throw error }
                capacity = Int(words[0])
            }
        }
    }
}

/// Everything a vCPU needs to go on in another VM over the same guest RAM:
/// what `VCPU.saveState(msrs:)` reads and `VCPU.restoreState(_:)` writes.
/// The guest must be stopped outside KVM_RUN, with any MMIO or port I/O exit
/// completed (`VCPU.completePendingExit()`), while it is read.
public struct VCPUState: Sendable {
    /// General-purpose registers, RIP and RFLAGS (KVM_GET_REGS).
    public var registers: VCPU.Registers
    /// Segment, control and descriptor-table registers, EFER and the APIC
    /// base (KVM_GET_SREGS).
    public var specialRegisters: VCPU.SpecialRegisters
    /// x87 and SSE state (KVM_GET_FPU).
    public var fpu: VCPU.FPU
    /// The local APIC's 1 KiB register page: enabled state, TPR, ISR, IRR,
    /// the timer (KVM_GET_LAPIC).
    public var localAPIC: [UInt8]
    /// Pending and injected events, interrupt shadow (KVM_GET_VCPU_EVENTS).
    public var events: VCPU.Events
    /// (index, value) of each MSR saved, in the order read (KVM_GET_MSRS).
    public var msrs: [(index: UInt32, value: UInt64)]
    /// KVM_MP_STATE_* (KVM_GET_MP_STATE): running, halted, waiting for SIPI.
    public var mpState: UInt32

    /// Makes a state from its parts (a decoder builds one so).
    public init(
        registers: VCPU.Registers, specialRegisters: VCPU.SpecialRegisters, fpu: VCPU.FPU, localAPIC: [UInt8],
        events: VCPU.Events, msrs: [(index: UInt32, value: UInt64)], mpState: UInt32
    ) {
        self.registers = registers
        self.specialRegisters = specialRegisters
        self.fpu = fpu
        self.localAPIC = localAPIC
        self.events = events
        self.msrs = msrs
        self.mpState = mpState
    }

    /// IA32_TSC: written first among the MSRs, so KVM computes the new VM's
    /// TSC offset from it and the guest's TSC reads on from where it stopped.
    public static let tsc: UInt32 = 0x10
    /// IA32_APIC_BASE: the APIC's address and its xAPIC/x2APIC enables.
    public static let apicBase: UInt32 = 0x1B
    /// IA32_TSC_DEADLINE: written after the LAPIC, whose timer mode it needs
    /// (as QEMU's kvm_put_tscdeadline_msr does).
    public static let tscDeadline: UInt32 = 0x6E0

    /// The MSRs a guest of this package's kind uses and a successor must get
    /// back: the TSC and its adjustment, the APIC base, the TSC deadline,
    /// MISC_ENABLE, PAT, SYSENTER and the long-mode syscall MSRs. Of these,
    /// only those in `supported` (KVMSystem's `msrIndexList()`) are saved,
    /// and the APIC base always: KVM serves it for every vCPU (arch/x86/kvm/
    /// x86.c, kvm_get_msr_common) but leaves it out of the list, as it also
    /// travels in the special registers.
    public static func msrsInUse(supported: [UInt32]) -> [UInt32] {
        let wanted: [UInt32] = [
            tsc,
            0x3B,  // TSC_ADJUST
            apicBase,
            0x1A0,  // MISC_ENABLE
            0x277,  // PAT
            0x174, 0x175, 0x176,  // SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP
            0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084,  // STAR, LSTAR, CSTAR, FMASK
            0xC000_0102,  // KERNEL_GS_BASE
            tscDeadline,
        ]
        let available = Set(supported)
        return wanted.filter { $0 == apicBase || available.contains($0) }
    }
}

extension VCPU {
    /// Reads this vCPU's whole state: KVM_GET_REGS, KVM_GET_SREGS,
    /// KVM_GET_FPU, KVM_GET_LAPIC, KVM_GET_VCPU_EVENTS, KVM_GET_MSRS of
    /// `msrs` and KVM_GET_MP_STATE. The vCPU must be outside KVM_RUN with its
    /// last exit completed.
    public func saveState(msrs indices: [UInt32]) throws(SystemCallError) -> VCPUState {
        let values = try msrs(indices)
        return VCPUState(
            registers: try registers(), specialRegisters: try specialRegisters(), fpu: try fpu(),
            localAPIC: try localAPIC(), events: try events(),
            msrs: Array(zip(indices, values)).map { (index: $0.0, value: $0.1) }, mpState: try mpState())
    }

    /// Writes `state` into this vCPU, which has not run yet, in the order KVM
    /// needs (QEMU's kvm_arch_put_registers keeps the same): registers, FPU,
    /// special registers (which set the APIC base, and with it x2APIC mode,
    /// before the APIC page is written), the MSRs but the TSC deadline (the
    /// TSC first), the LAPIC page, the events, the MP state, then the TSC
    /// deadline, which arms the LAPIC timer the page configured.
    public func restoreState(_ state: VCPUState) throws(SystemCallError) {
        try setRegisters(state.registers)
        try setFPU(state.fpu)
        try setSpecialRegisters(state.specialRegisters)
        let deadline = state.msrs.filter { $0.index == VCPUState.tscDeadline }
        let others =
            state.msrs.filter { $0.index == VCPUState.tsc }
            + state.msrs.filter { $0.index != VCPUState.tsc && $0.index != VCPUState.tscDeadline }
        if !others.isEmpty { try setMSRs(others) }
        try setLocalAPIC(state.localAPIC)
        try setEvents(state.events)
        try setMPState(state.mpState)
        if !deadline.isEmpty { try setMSRs(deadline) }
    }
}
#endif
