#if os(Linux)
import TinyVM
import Virtio

/// How a bench rig with a guest and a vhost-user device ends, in this order:
/// the guest stops (its vCPU threads joined), the device is reset (the
/// backend stops its rings at GET_VRING_BASE), the connection closes, and
/// only then the backend is stopped, so that it never sees its rings taken
/// from under it.
func tearDownGuestRig<DeviceType>(vm: TinyVM, device: VirtioPCIDevice<DeviceType>, stopBackend: () -> Void) {
    vm.stop()
    _ = vm.wait()
    device.writeStatus(0)
    device.disconnect()
    stopBackend()
}
#endif
