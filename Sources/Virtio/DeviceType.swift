#if os(Linux)
public import VhostUser

/// What makes a virtio device one type and not another, on the one
/// virtio-pci transport (``VirtioPCIDevice``): its IDs, its queues, its
/// device-specific configuration and which features it offers. Everything
/// else (device status, common configuration, notify, ISR, MSI-X, the
/// vhost-user session that serves the queues) is the transport's, the same
/// for every type, as cloud-hypervisor splits its `VirtioPciDevice` from its
/// `VirtioDevice`s.
///
/// Queues are numbered as the type's specification numbers them (virtio 1.2
/// section 5): for block, request queues 0..<N; for network, receive/transmit
/// pairs then the control queue; for the file system, hiprio then the
/// request queues. A type whose configuration is not the backend's (network's
/// MAC, the file system's tag) builds it in ``negotiate(_:)`` instead of
/// reading it with GET_CONFIG. Every queue is handed to the backend at
/// DRIVER_OK except those ``isServedByVMM(queue:)`` names (virtio-net's
/// control queue, as QEMU serves it): the transport binds such a queue's
/// doorbell, walks its requests on a VMM thread, hands each to
/// ``serve(request:queue:context:)`` and signals the queue's call fd itself.
public protocol VirtioDeviceType: Sendable {
    /// The virtio device ID (virtio 1.2 section 5: 1 network, 2 block, 26 file
    /// system); the PCI device ID is 0x1040 + it (section 4.1.2.1).
    var virtioDeviceID: UInt16 { get }
    /// The PCI class code: class << 16 | subclass << 8 | programming interface.
    var classCode: UInt32 { get }
    /// A short name for logs and threads, such as `virtio-blk`.
    var name: String { get }
    /// The virtqueues the device has (num_queues in the common configuration).
    var queueCount: Int { get }
    /// The vhost-user protocol features the type asks the backend for (the
    /// transport adds nothing): VHOST_USER_PROTOCOL_F_* bits.
    var wantedProtocolFeatures: UInt64 { get }
    /// After the handshake: checks what the backend serves and returns the
    /// device-specific configuration as the guest reads it at BAR4 + 0x2000
    /// (at most 0x1000 bytes).
    func negotiate(_ backend: VhostUserFrontend) throws(VhostUserError) -> [UInt8]
    /// The features offered to the guest, from the backend's: VERSION_1, and
    /// only what needs nothing from the VMM (never RING_PACKED,
    /// ACCESS_PLATFORM or NOTIFICATION_DATA).
    func offeredFeatures(backend: UInt64) -> UInt64
    /// Of the features offered to the guest, those a restarted backend must
    /// still offer (what the VMM itself implements is not among them).
    func requiredOfRestartedBackend(offered: UInt64) -> UInt64
    /// Features the VMM implements itself (virtio-net's MAC, STATUS, CTRL_VQ):
    /// never passed on to the backend in SET_FEATURES.
    var featuresServedByVMM: UInt64 { get }
    /// Whether the VMM serves queue `q` itself instead of the backend: the
    /// backend never hears of it (no SET_VRING_* for it).
    func isServedByVMM(queue q: Int) -> Bool
    /// Whether DRIVER_OK enables queue `q` on the backend (SET_VRING_ENABLE 1)
    /// with the driver's `features`; a queue left disabled waits for the
    /// device type to enable it (virtio-net's pairs past the first, until
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: virtio 1.2 section 5.1.6.5.5).
    func isEnabledAtStart(queue q: Int, driverFeatures features: UInt64) -> Bool
    /// Serves one request on a VMM-served queue: `request` is what the driver
    /// made device-readable. Returns the bytes to write into the chain's
    /// device-writable part (at most `context.writableCount`), or nil for none.
    func serve(request: [UInt8], queue q: Int, context: any VMMQueueContext) -> [UInt8]?
}

/// What a device type may do while it serves a request on a queue the VMM
/// serves (``VirtioDeviceType/serve(request:queue:context:)``): it runs under
/// the device lock, between a reset and the next, with a live backend.
public protocol VMMQueueContext {
    /// The features the driver accepted.
    var driverFeatures: UInt64 { get }
    /// Bytes the request's chain lets the device write.
    var writableCount: Int { get }
    /// Whether queue `q` was started on the backend at DRIVER_OK.
    func isRunning(queue q: Int) -> Bool
    /// SET_VRING_ENABLE for backend queue `q`. A failure sets
    /// DEVICE_NEEDS_RESET (once the request is answered) as well as throwing.
    func setBackendQueue(_ q: Int, enabled: Bool) throws(VhostUserError)
}

extension VirtioDeviceType {
    /// The backend implements every feature.
    public var featuresServedByVMM: UInt64 { 0 }
    /// The backend serves every queue.
    public func isServedByVMM(queue q: Int) -> Bool { false }
    /// Every queue starts enabled.
    public func isEnabledAtStart(queue q: Int, driverFeatures features: UInt64) -> Bool { true }
    /// No queue is the VMM's: nothing to serve.
    public func serve(request: [UInt8], queue q: Int, context: any VMMQueueContext) -> [UInt8]? { nil }
}

extension VirtioDeviceType {
    /// The PCI device ID: 0x1040 + the virtio device ID (virtio 1.2 section 4.1.2.1).
    public var pciDeviceID: UInt16 { 0x1040 + virtioDeviceID }
}
#endif
