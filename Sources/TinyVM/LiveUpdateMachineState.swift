#if os(Linux)
public import KVM

/// What a paused guest's vCPUs and VM clock are, for another VM over the
/// same RAM to go on from: each vCPU's `VCPUState` and the kvmclock.
public struct MachineState: Sendable {
    /// Each vCPU's state, by index.
    public var vcpus: [VCPUState]
    /// The VM's kvmclock, in nanoseconds (KVM_GET_CLOCK).
    public var clock: UInt64

    /// A state from its parts.
    public init(vcpus: [VCPUState], clock: UInt64) {
        self.vcpus = vcpus
        self.clock = clock
    }
}

extension TinyVM {
    /// Reads every vCPU's state (registers, segment registers, FPU, LAPIC,
    /// events, the MSRs in use, MP state) and the VM clock. The VM must be
    /// paused (`pause(timeout:)`).
    public func saveMachineState() throws(TinyVMError) -> MachineState {
        try saveMachineState(msrs: try machineStateMSRs())
    }

    /// The MSRs `saveMachineState(msrs:)` reads: those in use that this
    /// host's KVM supports (KVM_GET_MSR_INDEX_LIST). Asked once before a
    /// pause, so the pause has one ioctl less.
    public func machineStateMSRs() throws(TinyVMError) -> [UInt32] {
        do { return VCPUState.msrsInUse(supported: try vm.system.msrIndexList()) } catch { throw .kvm(error) }
    }

    /// `saveMachineState()` with the MSR list asked beforehand (`machineStateMSRs()`).
    public func saveMachineState(msrs: [UInt32]) throws(TinyVMError) -> MachineState {
        do {
            var states: [VCPUState] = []
            for vcpu in vcpus { states.append(try vcpu.saveState(msrs: msrs)) }
            return MachineState(vcpus: states, clock: try vm.clock().clock)
        } catch { throw .kvm(error) }
    }

    /// Writes `state` into this VM's vCPUs, which have not run (a VM made
    /// with `incoming:` RAM): the guest goes on from there once `start()`ed.
    public func restoreMachineState(_ state: MachineState) throws(TinyVMError) {
        guard state.vcpus.count == vcpus.count else {
            throw .configuration("the state has \(state.vcpus.count) vCPUs, this VM \(vcpus.count)")
        }
        do {
            var clock = VirtualMachine.Clock()
            clock.clock = state.clock
            try vm.setClock(clock)
            for (vcpu, saved) in zip(vcpus, state.vcpus) { try vcpu.restoreState(saved) }
        } catch { throw .kvm(error) }
    }
}
#endif
