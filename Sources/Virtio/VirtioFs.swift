#if os(Linux)
public import PCI
public import VhostUser

/// virtio-fs (virtio 1.2 section 5.11) as a device type: device 0x105A,
/// class 0x018000, the hiprio queue (0) then N request queues (1...N), and a
/// device configuration the VMM builds itself: the tag (36 bytes, NUL-padded)
/// and num_request_queues (le32). The guest speaks FUSE to the backend
/// (virtiofsd); the VMM sees none of it.
///
/// virtiofsd 7.2 does not offer VHOST_USER_PROTOCOL_F_CONFIG, which is why
/// the configuration is not read with GET_CONFIG (QEMU's vhost-user-fs builds
/// it the same way).
public struct VirtioFs: VirtioDeviceType {
    /// Feature bits the file system device offers (virtio 1.2 sections 5.11.3 and 6).
    public enum Feature {
        /// Features that need nothing from the VMM: the split-ring features
        /// INDIRECT_DESC 28 and EVENT_IDX 29, which the backend implements.
        /// Never VIRTIO_FS_F_NOTIFICATION (0: a notification queue this
        /// device does not have), RING_PACKED, ACCESS_PLATFORM or NOTIFICATION_DATA.
        public static let safeBackendFeatures: UInt64 = (1 << 28) | (1 << 29)
    }

    /// The most request queues: the transport's queue count less the hiprio queue.
    public static let maxRequestQueues = 7
    /// The tag field's size (virtio 1.2 section 5.11.4).
    public static let tagSize = 36
    /// The size of struct virtio_fs_config: tag[36], le32 num_request_queues.
    public static let configSize = 40

    /// The tag the guest mounts the file system by.
    public let tag: String
    /// Request queues (N); the device has N + 1 queues with hiprio.
    public let requestQueues: Int
    public var queueCount: Int { requestQueues + 1 }
    public var virtioDeviceID: UInt16 { 26 }
    /// Mass storage (01), other (80), programming interface 00.
    public var classCode: UInt32 { 0x01_8000 }
    public var name: String { "virtio-fs" }
    /// MQ (0) and REPLY_ACK (3); not CONFIG (the VMM builds the configuration).
    public var wantedProtocolFeatures: UInt64 { (1 << 0) | (1 << 3) }

    /// A file system device with `tag` (1...36 bytes of UTF-8, no NUL) and
    /// `requestQueues` request queues (1...7).
    public init(tag: String, requestQueues: Int = 1) throws(VirtioError) {
        let bytes = Array(tag.utf8)
        guard (1...Self.tagSize).contains(bytes.count), !bytes.contains(0) else {
            throw .configuration("--tag must be 1...\(Self.tagSize) bytes of UTF-8 without NUL, not \(bytes.count)")
        }
        guard (1...Self.maxRequestQueues).contains(requestQueues) else {
            throw .configuration("--queues must be 1...\(Self.maxRequestQueues) for virtio-fs, not \(requestQueues)")
        }
        self.tag = tag
        self.requestQueues = requestQueues
    }

    /// The configuration the guest reads: the tag NUL-padded to 36 bytes, then N (le32).
    public var configuration: [UInt8] {
        var config = Array(tag.utf8) + [UInt8](repeating: 0, count: Self.tagSize - tag.utf8.count)
        let n = UInt32(requestQueues)
        config += [UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), UInt8((n >> 16) & 0xFF), UInt8(n >> 24)]
        return config
    }

    /// Checks that the backend serves hiprio and every request queue
    /// (GET_QUEUE_NUM, which needs VHOST_USER_PROTOCOL_F_MQ), and returns
    /// ``configuration``. A backend without MQ serves one queue pair at most
    /// (vhost-user.rst, "Multiple queue support"), which is hiprio and one
    /// request queue.
    public func negotiate(_ backend: VhostUserFrontend) throws(VhostUserError) -> [UInt8] {
        if backend.protocolFeatures & 1 != 0 {
            let served = try backend.getQueueNum()
            guard served >= UInt64(queueCount) else {
                throw VhostUserError.unsupported(
                    "the backend serves \(served) queues, not hiprio and \(requestQueues) request queues")
            }
        } else if requestQueues > 1 {
            throw VhostUserError.unsupported(
                "the backend does not offer VHOST_USER_PROTOCOL_F_MQ; --queues \(requestQueues) needs it")
        }
        return configuration
    }

    /// VERSION_1 and the backend's safe ring features.
    public func offeredFeatures(backend: UInt64) -> UInt64 {
        VirtioFeature.version1 | (backend & Feature.safeBackendFeatures)
    }

    /// Every offered feature: the backend implements them all.
    public func requiredOfRestartedBackend(offered: UInt64) -> UInt64 { offered }
}

/// A virtio-fs device on the virtio-pci transport.
public typealias VirtioFsDevice = VirtioPCIDevice<VirtioFs>

extension VirtioPCIDevice where DeviceType == VirtioFs {
    /// Makes a file system device with `tag` and `requestQueues` request
    /// queues, served by the vhost-user-fs backend at `socketPath` (such as
    /// virtiofsd), and plugs it into `vm` at 00:02.0.
    @discardableResult
    public static func attach(
        to vm: any VirtioHost, socketPath: String, tag: String, requestQueues: Int = 1,
        delivery: InterruptDelivery = .irqfd
    ) throws(VirtioError) -> VirtioFsDevice {
        try attach(
            to: vm, deviceType: try VirtioFs(tag: tag, requestQueues: requestQueues), socketPath: socketPath,
            delivery: delivery)
    }
}
#endif
