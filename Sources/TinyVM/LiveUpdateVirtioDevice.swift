#if os(Linux)
import IrqFdLinux
import SystemPackage
public import Virtio

// A virtio-pci device served by a vhost-user backend moving to a successor
// VMM: `VirtioPCIDevice`'s freeze/thaw/release and resume behind the
// live-update device seam. The backend is sent no message and keeps its
// connection: the socket, every kick eventfd and every call eventfd cross as
// descriptors, and the successor goes on over them.

/// A virtio-pci device as a live-update device (an adapter: the device's own
/// `freeze(timeout:)`, `thaw()` and `release()` throw and say more).
public final class LiveUpdateVirtioDevice<DeviceType: VirtioDeviceType & Codable>: LiveUpdateDevice {
    /// The device.
    public let device: VirtioPCIDevice<DeviceType>
    /// See ``LiveUpdateDevice/liveUpdateName``.
    public let liveUpdateName: String

    /// `device`, whose state travels under `name` ("virtio-blk").
    public init(_ device: VirtioPCIDevice<DeviceType>, name: String) {
        self.device = device
        liveUpdateName = name
    }

    /// `VirtioPCIDevice.freeze(timeout:)`: threads stopped, live routes masked, no vhost-user message.
    public func freeze() throws(LiveUpdateError) -> FrozenDevice {
        let frozen: VirtioDeviceFreeze<DeviceType>
        do { frozen = try device.freeze(timeout: .seconds(1)) } catch {
            throw .device(name: liveUpdateName, reason: "\(error)")
        }
        return FrozenDevice(
            state: frozen.state.encoded(), descriptors: frozen.descriptors,
            routes: frozen.state.routedVectors.count, queues: frozen.state.transport.queues.count)
    }

    /// `VirtioPCIDevice.thaw()`: routes re-armed, threads restarted.
    public func thaw() { try? device.thaw() }

    /// `VirtioPCIDevice.release()`: the connection given up without a message.
    public func release() { try? device.release() }

    /// How a successor rebuilds a device of this type whose state travels under `name`.
    public static func kind(name: String) -> LiveUpdateDeviceKind {
        LiveUpdateDeviceKind(name: name) { (vm, bytes, descriptors) throws(LiveUpdateError) in
            try IncomingVirtioDevice<DeviceType>(vm: vm, name: name, state: bytes, descriptors: descriptors)
        }
    }
}

/// A virtio device rebuilt in a successor: the state decoded and the
/// descriptors held until `start()` resumes it (which arms its routes).
final class IncomingVirtioDevice<DeviceType: VirtioDeviceType & Codable>: IncomingLiveUpdateDevice {
    let vm: TinyVM
    let name: String
    let state: VirtioDeviceHandOffState<DeviceType>
    let descriptors: [ReceivedDescriptor]
    private var resumed: LiveUpdateVirtioDevice<DeviceType>?

    init(vm: TinyVM, name: String, state bytes: [UInt8], descriptors: [ReceivedDescriptor]) throws(LiveUpdateError) {
        self.name = name
        do { state = try VirtioDeviceHandOffState<DeviceType>(decoding: bytes) } catch {
            throw .device(name: name, reason: "\(error)")
        }
        guard descriptors.count == state.descriptorCount else {
            throw .device(
                name: name, reason: "\(descriptors.count) descriptors, the state passes \(state.descriptorCount)")
        }
        self.vm = vm
        self.descriptors = descriptors
    }

    func start() throws(LiveUpdateError) {
        let owned = descriptors.map { $0.take() }
        do {
            let device = try VirtioPCIDevice<DeviceType>.resume(attachingTo: vm, state: state, descriptors: owned)
            resumed = LiveUpdateVirtioDevice(device, name: name)
        } catch { throw .device(name: name, reason: "\(error)") }
    }

    var device: any LiveUpdateDevice {
        guard let resumed else { preconditionFailure("the device was not started") }
        return resumed
    }
    var routes: Int { state.routedVectors.count }
    var queues: Int { state.transport.queues.count }
    var vhostUserMessages: Int { resumed?.device.frontend.messagesSent ?? 0 }
}
#endif
