#if os(Linux)
public import IrqFdCore
public import IrqFdRelay
public import KVM

/// Injects through `KVM_SIGNAL_MSI` on a KVM VM: the relay's injector on KVM.
///
/// Holds the VM weakly, like the KVM backend's kernel: a relay must not keep a
/// VM alive, and once the VM is gone injection throws `partitionGone`.
public struct KVMSignalMsiInjector: MsiInjector {
    private weak let vm: VirtualMachine?

    /// An injector for `vm` (which must have an in-kernel irqchip).
    public init(vm: VirtualMachine) { self.vm = vm }

    /// KVM_SIGNAL_MSI. A message the guest blocked (KVM returns 0) is not an
    /// error: the same happens to an irqfd injection.
    public func inject(_ message: MsiMessage) throws(IrqFdError) {
        guard let vm else { throw .partitionGone }
        do throws(SystemCallError) {
            try vm.signalMsi(address: message.address, data: message.data)
        } catch {
            throw .systemCall(error)
        }
    }
}

extension RelayIrqFd {
    /// A Linux relay injecting into `vm` with KVM_SIGNAL_MSI.
    public convenience init(vm: VirtualMachine) throws(IrqFdError) {
        try self.init(injector: KVMSignalMsiInjector(vm: vm))
    }
}
#endif
