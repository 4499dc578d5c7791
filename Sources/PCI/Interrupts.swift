#if os(Linux)
public import IrqFdCore
public import IrqFdRelay
public import MSIX

/// What a VMM gives its PCI functions for their MSI-X interrupts: a
/// partition whose routes the kernel delivers, an injector for delivery
/// from userspace, and the failures of the partition's coalesced commits
/// (no caller waits for those, so the emulators that use the partition hear
/// of them here).
public protocol MsiInterruptHost: AnyObject, Sendable {
    /// The VM's irqfd partition (on KVM: KVM_IRQFD and KVM_SET_GSI_ROUTING).
    var irqfdPartition: any IrqFd { get }
    /// Injects one MSI from userspace (on KVM: KVM_SIGNAL_MSI).
    var msiInjector: any MsiInjector { get }
    /// Tells `report` about every failed coalesced commit of ``irqfdPartition``
    /// for as long as `owner` lives.
    func addCommitErrorListener(owner: AnyObject, _ report: @escaping @Sendable (IrqFdError) -> Void)
}

/// How a PCI function's MSI-X interrupts reach the guest (`irqfd run
/// --delivery`). The guest sees the same thing every way; only the speed differs.
public enum InterruptDelivery: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Kernel irqfd routes (KVM_IRQFD + KVM_SET_GSI_ROUTING): no VMM code on the path.
    case irqfd
    /// The relay backend: a VMM thread waits on the route events and injects with KVM_SIGNAL_MSI.
    case relay
    /// The MSI-X emulator's userspace path: the signalling thread injects with KVM_SIGNAL_MSI.
    case userspace

    public var description: String { rawValue }

    /// An MSI-X emulator for `layout` delivering this way through `host`,
    /// and the relay partition it uses when this is `.relay` (the caller
    /// keeps it beside the emulator):
    /// - `.irqfd`: the host's partition, with its injector as the fallback for
    ///   a vector whose route could not be made;
    /// - `.relay`: a `RelayIrqFd` partition of the function's own;
    /// - `.userspace`: the emulator's userspace path through the host's injector.
    ///
    /// The emulator hears of the host's failed coalesced commits (its error
    /// path: `MsixEmulator.lastRouteError`, `counters.routeErrors`).
    public func makeEmulator(
        layout: MsixLayout, host: any MsiInterruptHost
    ) throws(IrqFdError) -> (emulator: MsixEmulator, relay: RelayIrqFd?) {
        let injector = host.msiInjector
        let delivery: MsixDelivery
        var relay: RelayIrqFd?
        switch self {
        case .irqfd: delivery = .irqfd(host.irqfdPartition, fallback: injector)
        case .relay:
            let partition = try RelayIrqFd(injector: injector)
            relay = partition
            delivery = .irqfd(partition)
        case .userspace: delivery = .userspace(injector)
        }
        let emulator = MsixEmulator(layout: layout, delivery: delivery)
        host.addCommitErrorListener(owner: emulator) { [weak emulator] in emulator?.reportCommitError($0) }
        return (emulator, relay)
    }
}
#endif
