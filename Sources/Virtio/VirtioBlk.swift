#if os(Linux)
public import PCI
public import VhostUser

/// virtio-blk (virtio 1.2 section 5.2) as a device type: device 0x1042,
/// class 0x010000, N request queues, struct virtio_blk_config from the
/// backend's GET_CONFIG with num_queues set to N.
public struct VirtioBlk: VirtioDeviceType {
    /// Feature bits of the block device (virtio 1.2 section 5.2.3).
    public enum Feature {
        /// VIRTIO_BLK_F_MQ (12).
        public static let multiQueue: UInt64 = 1 << 12
        /// Block features that need nothing from the VMM: SIZE_MAX 1, SEG_MAX 2,
        /// GEOMETRY 4, RO 5, BLK_SIZE 6, FLUSH 9, TOPOLOGY 10, CONFIG_WCE 11,
        /// DISCARD 13, WRITE_ZEROES 14, and the split-ring features
        /// INDIRECT_DESC 28 and EVENT_IDX 29, which the backend implements.
        /// Never RING_PACKED (34), ACCESS_PLATFORM (33) or NOTIFICATION_DATA (38).
        public static let safeBackendFeatures: UInt64 =
            (1 << 1) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 13)
            | (1 << 14) | (1 << 28) | (1 << 29)
    }

    /// The most request queues (`--queues`).
    public static let maxQueues = 8
    /// The size of struct virtio_blk_config (virtio 1.2 section 5.2.4) read with GET_CONFIG.
    public static let configSize = 60

    public let queueCount: Int
    public var virtioDeviceID: UInt16 { 2 }
    /// Mass storage (01), SCSI (00), programming interface 00.
    public var classCode: UInt32 { 0x01_0000 }
    public var name: String { "virtio-blk" }
    /// MQ (0), REPLY_ACK (3), CONFIG (9).
    public var wantedProtocolFeatures: UInt64 { (1 << 0) | (1 << 3) | (1 << 9) }

    /// A block device with `queues` request queues (1...8).
    public init(queues: Int) throws(VirtioError) {
        guard (1...Self.maxQueues).contains(queues) else {
            throw .configuration("--queues must be 1...\(Self.maxQueues), not \(queues)")
        }
        queueCount = queues
    }

    /// GET_QUEUE_NUM when there is more than one queue (the backend must serve
    /// them all), then GET_CONFIG.
    public func negotiate(_ backend: VhostUserFrontend) throws(VhostUserError) -> [UInt8] {
        if queueCount > 1 {
            guard backend.protocolFeatures & 1 != 0 else {
                throw VhostUserError.unsupported(
                    "the backend does not offer VHOST_USER_PROTOCOL_F_MQ; --queues \(queueCount) needs it")
            }
            let served = try backend.getQueueNum()
            guard served >= UInt64(queueCount) else {
                throw VhostUserError.unsupported("the backend serves \(served) queues, not \(queueCount)")
            }
        }
        guard backend.protocolFeatures & (1 << 9) != 0 else {
            throw VhostUserError.unsupported("the backend does not offer VHOST_USER_PROTOCOL_F_CONFIG (GET_CONFIG)")
        }
        var config = try backend.getConfig(offset: 0, size: UInt32(Self.configSize))
        guard config.count == Self.configSize else {
            throw VhostUserError.badReply(
                .getConfig, "\(config.count) bytes of virtio_blk_config, not \(Self.configSize)")
        }
        // num_queues (offset 34): what this device offers, whatever the backend could serve.
        config[34] = UInt8(queueCount & 0xFF)
        config[35] = UInt8(queueCount >> 8)
        return config
    }

    /// VERSION_1, the backend's safe block features, and MQ with more than one queue.
    public func offeredFeatures(backend: UInt64) -> UInt64 {
        var offered = VirtioFeature.version1 | (backend & Feature.safeBackendFeatures)
        if queueCount > 1 { offered |= Feature.multiQueue }
        return offered
    }

    /// All offered but MQ (the device's own: it was checked with GET_QUEUE_NUM).
    public func requiredOfRestartedBackend(offered: UInt64) -> UInt64 { offered & ~Feature.multiQueue }
}

/// A virtio-blk device on the virtio-pci transport.
public typealias VirtioBlkDevice = VirtioPCIDevice<VirtioBlk>

extension VirtioPCIDevice where DeviceType == VirtioBlk {
    /// The block feature bits.
    public typealias Feature = VirtioBlk.Feature

    /// The most queues `--queues` accepts.
    public static var maxQueues: Int { VirtioBlk.maxQueues }

    /// Connects to the vhost-user-blk backend at `socketPath`, negotiates,
    /// reads the block configuration, and makes the device (not yet plugged in).
    public convenience init(
        vm: any VirtioHost, socketPath: String, queues: Int = 1, delivery: InterruptDelivery = .irqfd
    ) throws(VirtioError) {
        try self.init(host: vm, deviceType: try VirtioBlk(queues: queues), socketPath: socketPath, delivery: delivery)
    }

    /// Makes a block device and plugs it into `vm` at 00:02.0.
    @discardableResult
    public static func attach(
        to vm: any VirtioHost, socketPath: String, queues: Int = 1, delivery: InterruptDelivery = .irqfd
    ) throws(VirtioError) -> VirtioBlkDevice {
        try attach(to: vm, deviceType: try VirtioBlk(queues: queues), socketPath: socketPath, delivery: delivery)
    }

    /// The device's block configuration (struct virtio_blk_config) as the guest reads it.
    public var blockConfig: [UInt8] { deviceConfiguration }
}
#endif
