/// Injects one MSI into a partition, now, from userspace.
///
/// This is the whole contract a hypervisor must offer for the relay backend
/// (and for the MSI-X emulator's userspace delivery path): KVM's
/// `KVM_SIGNAL_MSI`, WHP's `WHvRequestInterrupt`, Hypervisor.framework's
/// `hv_gic_send_msi`. Implementations must be callable from any thread.
public protocol MsiInjector: Sendable {
    /// Injects `message` once. Throws if the hypervisor refused the call (the
    /// error names it); a message the guest's APIC ignores is not an error.
    func inject(_ message: MsiMessage) throws(IrqFdError)
}
