#if os(Linux)
public import PCI
public import VhostUser

/// virtio-net (virtio 1.2 section 5.1) as a device type: device 0x1041,
/// class 0x020000. Queues: receiveq1, transmitq1, ... receiveqN, transmitqN
/// (2k is pair k's receive queue, 2k + 1 its transmit queue), then, with
/// more than one pair, the control queue, which the VMM serves itself (as
/// QEMU does: the backend never sees it). The device configuration is the
/// VMM's: mac, status (link up) and max_virtqueue_pairs.
public struct VirtioNet: VirtioDeviceType {
    /// Feature bits of the network device (virtio 1.2 section 5.1.3).
    public enum Feature {
        /// VIRTIO_NET_F_MAC (5): the configuration's mac is valid.
        public static let mac: UInt64 = 1 << 5
        /// VIRTIO_NET_F_STATUS (16): the configuration's status is valid.
        public static let status: UInt64 = 1 << 16
        /// VIRTIO_NET_F_CTRL_VQ (17): the control queue.
        public static let controlQueue: UInt64 = 1 << 17
        /// VIRTIO_NET_F_MQ (22): several queue pairs, chosen with VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
        public static let multiQueue: UInt64 = 1 << 22
        /// Network features that need nothing from the VMM: the checksum and
        /// segmentation offloads, which live in the 12-byte virtio_net_hdr
        /// between driver and backend (CSUM 0, GUEST_CSUM 1, GUEST_TSO4 7,
        /// GUEST_TSO6 8, GUEST_ECN 9, GUEST_UFO 10, HOST_TSO4 11, HOST_TSO6 12,
        /// HOST_ECN 13, HOST_UFO 14), MRG_RXBUF 15, and the split-ring features
        /// INDIRECT_DESC 28 and EVENT_IDX 29, which the backend implements and
        /// the VMM's control queue honours too. Not MTU (3) or SPEED_DUPLEX
        /// (63), whose configuration fields the VMM does not serve; not the
        /// control-queue classes the VMM does not implement (CTRL_RX 18,
        /// CTRL_VLAN 19, GUEST_ANNOUNCE 21, CTRL_MAC_ADDR 23, RSS, ...); not
        /// legacy GSO (6) or ANY_LAYOUT (27); never RING_PACKED (34),
        /// ACCESS_PLATFORM (33) or NOTIFICATION_DATA (38).
        public static let safeBackendFeatures: UInt64 =
            (1 << 0) | (1 << 1) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13)
            | (1 << 14) | (1 << 15) | (1 << 28) | (1 << 29)
    }

    /// The control queue's classes and acks (virtio 1.2 section 5.1.6.5).
    public enum Control {
        /// VIRTIO_NET_OK.
        public static let ok: UInt8 = 0
        /// VIRTIO_NET_ERR.
        public static let error: UInt8 = 1
        /// VIRTIO_NET_CTRL_MQ.
        public static let multiQueueClass: UInt8 = 4
        /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
        public static let pairsSet: UInt8 = 0
    }

    /// VIRTIO_NET_S_LINK_UP (section 5.1.4).
    public static let linkUp: UInt16 = 1
    /// The most queue pairs: 2N + 1 queues must fit the transport's notify structure.
    public static let maxQueuePairs = 3
    /// The MAC address a device has unless given one.
    public static let defaultMAC: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    /// The size of the configuration the VMM serves: mac, status, max_virtqueue_pairs.
    public static let configSize = 10

    /// Receive/transmit queue pairs (max_virtqueue_pairs).
    public let queuePairs: Int
    /// The MAC address in the configuration.
    public let mac: [UInt8]
    public var virtioDeviceID: UInt16 { 1 }
    /// Network controller (02), Ethernet (00), programming interface 00.
    public var classCode: UInt32 { 0x02_0000 }
    public var name: String { "virtio-net" }
    /// The pairs, then the control queue when there is more than one pair.
    public var queueCount: Int { 2 * queuePairs + (controlQueue == nil ? 0 : 1) }
    /// The control queue's index (2N), offered with more than one pair.
    public var controlQueue: Int? { queuePairs > 1 ? 2 * queuePairs : nil }
    /// MQ (0) and REPLY_ACK (3): SET_VRING_ENABLE, which VQ_PAIRS_SET sends, is answered.
    public var wantedProtocolFeatures: UInt64 { (1 << 0) | (1 << 3) }

    /// A network device with `queuePairs` pairs (1...3) and MAC address `mac` (6 bytes).
    public init(queuePairs: Int, mac: [UInt8] = VirtioNet.defaultMAC) throws(VirtioError) {
        guard (1...Self.maxQueuePairs).contains(queuePairs) else {
            throw .configuration("--queues must be 1...\(Self.maxQueuePairs) pairs, not \(queuePairs)")
        }
        guard mac.count == 6 else { throw .configuration("a MAC address has 6 bytes, not \(mac.count)") }
        self.queuePairs = queuePairs
        self.mac = mac
    }

    /// Parses `52:54:00:12:34:56` (six hex bytes separated by colons).
    public static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return bytes.count == 6 ? bytes : nil
    }

    /// The backend must offer VERSION_1; with more than one pair also MQ (the
    /// feature and the protocol feature), PROTOCOL_FEATURES (SET_VRING_ENABLE
    /// chooses the pairs) and at least that many pairs (GET_QUEUE_NUM, which a
    /// network backend answers in pairs). The configuration is the VMM's.
    public func negotiate(_ backend: VhostUserFrontend) throws(VhostUserError) -> [UInt8] {
        let features = backend.backendFeatures
        guard features & VirtioFeature.version1 != 0 else {
            throw .unsupported("the backend does not offer VIRTIO_F_VERSION_1")
        }
        if queuePairs > 1 {
            guard features & VirtioFeature.vhostProtocolFeatures != 0, backend.protocolFeatures & 1 != 0,
                features & Feature.multiQueue != 0
            else {
                throw .unsupported(
                    "--queues \(queuePairs) needs VIRTIO_NET_F_MQ and VHOST_USER_PROTOCOL_F_MQ from the backend")
            }
            let served = try backend.getQueueNum()
            guard served >= UInt64(queuePairs) else {
                throw .unsupported("the backend serves \(served) queue pairs, not \(queuePairs)")
            }
        }
        var config = mac
        config += [UInt8(Self.linkUp & 0xFF), UInt8(Self.linkUp >> 8)]
        config += [UInt8(queuePairs & 0xFF), UInt8(queuePairs >> 8)]
        return config
    }

    /// VERSION_1, MAC and STATUS (the VMM's configuration), the backend's safe
    /// features, and MQ with CTRL_VQ when there is more than one pair.
    public func offeredFeatures(backend: UInt64) -> UInt64 {
        var offered = VirtioFeature.version1 | Feature.mac | Feature.status | (backend & Feature.safeBackendFeatures)
        if queuePairs > 1 { offered |= Feature.multiQueue | Feature.controlQueue }
        return offered
    }

    /// MAC, STATUS and CTRL_VQ are the VMM's; the rest the backend implements.
    public var featuresServedByVMM: UInt64 { Feature.mac | Feature.status | Feature.controlQueue }

    /// Everything offered but what the VMM itself serves.
    public func requiredOfRestartedBackend(offered: UInt64) -> UInt64 { offered & ~featuresServedByVMM }

    /// The control queue is the VMM's.
    public func isServedByVMM(queue q: Int) -> Bool { q == controlQueue }

    /// With MQ the device starts on the first pair alone (section 5.1.6.5.5);
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET enables more.
    public func isEnabledAtStart(queue q: Int, driverFeatures features: UInt64) -> Bool {
        features & Feature.multiQueue == 0 || q < 2
    }

    /// A control request (section 5.1.6.5: class, command, data; the ack in
    /// the first device-writable byte). VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET with
    /// MQ negotiated and 1...max_virtqueue_pairs pairs, all of them started:
    /// the backend's queues of those pairs enabled, the rest disabled, and
    /// VIRTIO_NET_OK. Anything else (a class or command whose feature was not
    /// negotiated, a request too short to hold its data, a pair count out of
    /// range, a backend that refused) is VIRTIO_NET_ERR. A chain with no
    /// writable byte has nowhere to put an ack: nothing is written.
    public func serve(request: [UInt8], queue q: Int, context: any VMMQueueContext) -> [UInt8]? {
        guard q == controlQueue, context.writableCount >= 1 else { return nil }
        guard request.count >= 2 else { return [Control.error] }
        switch (request[0], request[1]) {
        case (Control.multiQueueClass, Control.pairsSet):
            guard context.driverFeatures & Feature.multiQueue != 0, request.count >= 4 else { return [Control.error] }
            let pairs = Int(request[2]) | Int(request[3]) << 8
            guard (1...queuePairs).contains(pairs), (0..<2 * pairs).allSatisfy(context.isRunning(queue:)) else {
                return [Control.error]
            }
            do throws(VhostUserError) {
                for backendQueue in 0..<2 * queuePairs where context.isRunning(queue: backendQueue) {
                    try context.setBackendQueue(backendQueue, enabled: backendQueue < 2 * pairs)
                }
            } catch {
                return [Control.error]
            }
            return [Control.ok]
        default:
            return [Control.error]
        }
    }
}

/// A virtio-net device on the virtio-pci transport.
public typealias VirtioNetDevice = VirtioPCIDevice<VirtioNet>

extension VirtioPCIDevice where DeviceType == VirtioNet {
    /// The network feature bits.
    public typealias Feature = VirtioNet.Feature

    /// Connects to the vhost-user-net backend at `socketPath`, negotiates and
    /// makes the device (not yet plugged in).
    public convenience init(
        vm: any VirtioHost, socketPath: String, queuePairs: Int = 1, mac: [UInt8] = VirtioNet.defaultMAC,
        delivery: InterruptDelivery = .irqfd
    ) throws(VirtioError) {
        let type = try VirtioNet(queuePairs: queuePairs, mac: mac)
        try self.init(host: vm, deviceType: type, socketPath: socketPath, delivery: delivery)
    }

    /// Makes a network device and plugs it into `vm` at 00:02.0.
    @discardableResult
    public static func attach(
        to vm: any VirtioHost, socketPath: String, queuePairs: Int = 1, mac: [UInt8] = VirtioNet.defaultMAC,
        delivery: InterruptDelivery = .irqfd
    ) throws(VirtioError) -> VirtioNetDevice {
        let type = try VirtioNet(queuePairs: queuePairs, mac: mac)
        return try attach(to: vm, deviceType: type, socketPath: socketPath, delivery: delivery)
    }
}
#endif
