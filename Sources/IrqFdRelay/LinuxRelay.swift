#if os(Linux)
public import IrqFdCore
import IrqFdLinux

extension RelayIrqFd {
    /// A Linux relay: an epoll thread, eventfd route events, `injector` (on
    /// KVM, IrqFdKVM's `KVMSignalMsiInjector`; any other hypervisor's MSI
    /// injection serves as well).
    public convenience init(injector: any MsiInjector) throws(IrqFdError) {
        try self.init(
            injector: injector, poller: try EpollPoller(),
            makeEvent: { () throws(IrqFdError) -> any Event in try EventFD() })
    }
}
#endif
