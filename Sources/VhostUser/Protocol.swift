public import SystemPackage

// The vhost-user protocol as QEMU's docs/interop/vhost-user.rst specifies it:
// message numbers, flags, feature bits, payload layouts and the pure reply
// parser. No platform code here: it is what the fuzzer of the next issue drives.

/// A front-end message type (vhost-user.rst, "Front-end message types").
/// Each case names the section that specifies it.
public enum VhostUserRequest: UInt32, Sendable, CaseIterable {
    /// VHOST_USER_GET_FEATURES: the back-end's virtio features (reply u64).
    case getFeatures = 1
    /// VHOST_USER_SET_FEATURES: the features the front-end accepted (u64).
    case setFeatures = 2
    /// VHOST_USER_SET_OWNER: this front-end owns the session.
    case setOwner = 3
    /// VHOST_USER_RESET_OWNER: deprecated; never sent by this frontend.
    case resetOwner = 4
    /// VHOST_USER_SET_MEM_TABLE: memory regions, one fd each (multiple memory regions description).
    case setMemTable = 5
    /// VHOST_USER_SET_VRING_NUM: a ring's size (vring state description).
    case setVringNum = 8
    /// VHOST_USER_SET_VRING_ADDR: a ring's addresses in front-end user space (vring address description).
    case setVringAddr = 9
    /// VHOST_USER_SET_VRING_BASE: the next available index the back-end reads (vring state description).
    case setVringBase = 10
    /// VHOST_USER_GET_VRING_BASE: stops a ring; replies its next available index.
    case getVringBase = 11
    /// VHOST_USER_SET_VRING_KICK: a ring's kick eventfd (u64 index, fd by SCM_RIGHTS); starts the ring.
    case setVringKick = 12
    /// VHOST_USER_SET_VRING_CALL: a ring's call eventfd (u64 index, fd by SCM_RIGHTS).
    case setVringCall = 13
    /// VHOST_USER_SET_VRING_ERR: a ring's error eventfd.
    case setVringErr = 14
    /// VHOST_USER_GET_PROTOCOL_FEATURES: the back-end's protocol features (reply u64).
    case getProtocolFeatures = 15
    /// VHOST_USER_SET_PROTOCOL_FEATURES: the protocol features the front-end accepted (u64).
    case setProtocolFeatures = 16
    /// VHOST_USER_GET_QUEUE_NUM: how many queues the back-end serves (needs protocol MQ).
    case getQueueNum = 17
    /// VHOST_USER_SET_VRING_ENABLE: enables or disables a ring (vring state description).
    case setVringEnable = 18
    /// VHOST_USER_GET_CONFIG: device config space (device config space description; needs protocol CONFIG).
    case getConfig = 24
    /// VHOST_USER_SET_CONFIG: writes device config space.
    case setConfig = 25

    /// The specification's name of the message, for errors and logs.
    public var name: String {
        switch self {
        case .getFeatures: "GET_FEATURES"
        case .setFeatures: "SET_FEATURES"
        case .setOwner: "SET_OWNER"
        case .resetOwner: "RESET_OWNER"
        case .setMemTable: "SET_MEM_TABLE"
        case .setVringNum: "SET_VRING_NUM"
        case .setVringAddr: "SET_VRING_ADDR"
        case .setVringBase: "SET_VRING_BASE"
        case .getVringBase: "GET_VRING_BASE"
        case .setVringKick: "SET_VRING_KICK"
        case .setVringCall: "SET_VRING_CALL"
        case .setVringErr: "SET_VRING_ERR"
        case .getProtocolFeatures: "GET_PROTOCOL_FEATURES"
        case .setProtocolFeatures: "SET_PROTOCOL_FEATURES"
        case .getQueueNum: "GET_QUEUE_NUM"
        case .setVringEnable: "SET_VRING_ENABLE"
        case .getConfig: "GET_CONFIG"
        case .setConfig: "SET_CONFIG"
        }
    }
}

/// Why a vhost-user exchange failed. Every case names the message (or the call).
public enum VhostUserError: Error, Equatable, CustomStringConvertible {
    /// A system call failed: connect, sendmsg, recvmsg, poll, mmap...
    case systemCall(call: String, errno: Errno)
    /// No (complete) reply to this message within the deadline.
    case timeout(VhostUserRequest)
    /// The peer closed the connection (end of file), during this message if named.
    case disconnected(VhostUserRequest?)
    /// The reply to this message was malformed: wrong type, flags, size or descriptors; says why.
    case badReply(VhostUserRequest, String)
    /// The back-end answered this message's REPLY_ACK with a nonzero status.
    case rejected(VhostUserRequest, status: UInt64)
    /// A feature or argument the exchange needs is missing or out of range.
    case unsupported(String)

    /// One line naming the message and the cause.
    public var description: String {
        switch self {
        case .systemCall(let call, let errno): "vhost-user: \(call) failed: \(errno)"
        case .timeout(let request): "vhost-user: no reply to \(request.name) within the deadline"
        case .disconnected(let request?): "vhost-user: the back-end disconnected during \(request.name)"
        case .disconnected(nil): "vhost-user: the back-end disconnected"
        case .badReply(let request, let why): "vhost-user: bad reply to \(request.name): \(why)"
        case .rejected(let request, let status): "vhost-user: the back-end rejected \(request.name) (status \(status))"
        case .unsupported(let what): "vhost-user: unsupported: \(what)"
        }
    }
}

/// Header flags (vhost-user.rst, "Header").
public enum VhostUserFlags {
    /// Bits 0-1: the protocol version, 1.
    public static let versionMask: UInt32 = 0x3
    /// The only version there is.
    public static let version: UInt32 = 0x1
    /// Bit 2: this message is a reply.
    public static let reply: UInt32 = 0x4
    /// Bit 3: the front-end asks for a REPLY_ACK (protocol feature REPLY_ACK).
    public static let needReply: UInt32 = 0x8
}

/// Virtio and vhost-user feature bits (virtio 1.2 sections 6 and 5.2.3; vhost-user.rst).
public enum VhostUserFeature {
    /// VIRTIO_BLK_F_SIZE_MAX (1): size_max in config is the largest segment.
    public static let blkSizeMax: UInt64 = 1 << 1
    /// VIRTIO_BLK_F_SEG_MAX (2): seg_max in config is the most segments a request has.
    public static let blkSegMax: UInt64 = 1 << 2
    /// VIRTIO_BLK_F_GEOMETRY (4).
    public static let blkGeometry: UInt64 = 1 << 4
    /// VIRTIO_BLK_F_RO (5): the device is read-only.
    public static let blkReadOnly: UInt64 = 1 << 5
    /// VIRTIO_BLK_F_BLK_SIZE (6): blk_size in config.
    public static let blkBlockSize: UInt64 = 1 << 6
    /// VIRTIO_BLK_F_FLUSH (9): VIRTIO_BLK_T_FLUSH is supported.
    public static let blkFlush: UInt64 = 1 << 9
    /// VIRTIO_BLK_F_TOPOLOGY (10).
    public static let blkTopology: UInt64 = 1 << 10
    /// VIRTIO_BLK_F_CONFIG_WCE (11).
    public static let blkConfigWCE: UInt64 = 1 << 11
    /// VIRTIO_BLK_F_MQ (12): num_queues in config.
    public static let blkMultiQueue: UInt64 = 1 << 12
    /// VIRTIO_BLK_F_DISCARD (13).
    public static let blkDiscard: UInt64 = 1 << 13
    /// VIRTIO_BLK_F_WRITE_ZEROES (14).
    public static let blkWriteZeroes: UInt64 = 1 << 14
    /// VIRTIO_F_RING_INDIRECT_DESC (28).
    public static let ringIndirectDescriptors: UInt64 = 1 << 28
    /// VIRTIO_F_RING_EVENT_IDX (29).
    public static let ringEventIndex: UInt64 = 1 << 29
    /// VHOST_USER_F_PROTOCOL_FEATURES (30): GET/SET_PROTOCOL_FEATURES exist; rings start disabled.
    public static let protocolFeatures: UInt64 = 1 << 30
    /// VIRTIO_F_VERSION_1 (32).
    public static let version1: UInt64 = 1 << 32
    /// VIRTIO_F_ACCESS_PLATFORM (33): never offered or accepted here.
    public static let accessPlatform: UInt64 = 1 << 33
    /// VIRTIO_F_RING_PACKED (34): never offered or accepted here.
    public static let ringPacked: UInt64 = 1 << 34
    /// VIRTIO_F_NOTIFICATION_DATA (38): never offered or accepted here.
    public static let notificationData: UInt64 = 1 << 38
    /// The block features a VMM can pass through with nothing to do itself.
    public static let passThroughBlock: UInt64 =
        blkSizeMax | blkSegMax | blkGeometry | blkReadOnly | blkBlockSize | blkFlush | blkTopology | blkMultiQueue
}

/// Protocol feature bits (vhost-user.rst, "Protocol features").
public enum VhostUserProtocolFeature {
    /// VHOST_USER_PROTOCOL_F_MQ (0): GET_QUEUE_NUM; several queues.
    public static let multiQueue: UInt64 = 1 << 0
    /// VHOST_USER_PROTOCOL_F_REPLY_ACK (3): NEED_REPLY gets a u64 status.
    public static let replyAck: UInt64 = 1 << 3
    /// VHOST_USER_PROTOCOL_F_CONFIG (9): GET_CONFIG / SET_CONFIG.
    public static let config: UInt64 = 1 << 9
}

/// The 12-byte message header (vhost-user.rst, "Header"): request, flags, payload size, little-endian.
public struct VhostUserHeader: Equatable, Sendable {
    /// Bytes of a header on the wire.
    public static let byteCount = 12
    /// The message type (a front-end request number; replies repeat it).
    public var request: UInt32
    /// Version, REPLY and NEED_REPLY bits.
    public var flags: UInt32
    /// Bytes of payload after the header.
    public var size: UInt32

    /// A header with these fields.
    public init(request: UInt32, flags: UInt32, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    /// Decodes the first 12 bytes; nil when there are fewer.
    public init?(_ bytes: some Collection<UInt8>) {
        let b = Array(bytes.prefix(Self.byteCount))
        guard b.count == Self.byteCount else { return nil }
        request = b.u32(at: 0)
        flags = b.u32(at: 4)
        size = b.u32(at: 8)
    }

    /// The header's wire bytes.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.byteCount)
        out.appendLE(request)
        out.appendLE(flags)
        out.appendLE(size)
        return out
    }
}

/// One guest memory region as SET_MEM_TABLE sends it
/// (vhost-user.rst, "Memory region description").
public struct VhostUserMemoryRegion: Sendable, Equatable {
    /// Where the region starts in guest-physical address space.
    public var guestPhysicalAddress: UInt64
    /// The region's length in bytes.
    public var size: UInt64
    /// Where the front-end mapped it in its own address space (ring addresses use these).
    public var userAddress: UInt64
    /// The offset of the region in the file `fd` refers to.
    public var mmapOffset: UInt64
    /// The region's file (a memfd): borrowed, sent by SCM_RIGHTS; the caller keeps it open.
    public var fd: FileDescriptor

    /// A region; `fd` stays the caller's.
    public init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64, fd: FileDescriptor)
    {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
        self.fd = fd
    }

    /// `userAddress` for `guest...guest+length-1` when that range lies inside this region.
    public func userAddress(of guest: UInt64, length: UInt64) -> UInt64? {
        guard guest >= guestPhysicalAddress else { return nil }
        let offset = guest - guestPhysicalAddress
        guard offset <= size, length <= size - offset else { return nil }
        return userAddress + offset
    }
}

/// Limits of the protocol as this package uses it.
public enum VhostUserLimits {
    /// Regions one SET_MEM_TABLE carries (VHOST_MEMORY_BASELINE_NREGIONS).
    public static let maxRegions = 8
    /// The largest config space GET_CONFIG moves (VHOST_USER_MAX_CONFIG_SIZE).
    public static let maxConfigSize = 256
    /// The largest payload this package accepts from a peer.
    public static let maxPayload = 4096
    /// Ring index flag in SET_VRING_KICK/CALL/ERR: no descriptor is attached (polling mode).
    public static let invalidFdFlag: UInt64 = 1 << 8
}

/// What a reply must carry, by the request it answers.
public enum VhostUserReplyShape: Equatable, Sendable {
    /// A u64: GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, and every REPLY_ACK.
    case u64
    /// A vring state (u32 index, u32 num): GET_VRING_BASE.
    case vringState
    /// A config space description of this many payload bytes: GET_CONFIG.
    case config(size: UInt32)

    /// The exact payload size this shape has.
    public var payloadSize: Int {
        switch self {
        case .u64, .vringState: 8
        case .config(let size): 12 + Int(size)
        }
    }
}

/// The pure reply parser: bytes (and how many descriptors came with them) in,
/// a validated payload or the exact typed error out. It never traps, whatever the bytes.
public enum VhostUserReplyParser {
    /// Validates a reply header for `request`: type, version, REPLY bit, and
    /// the exact payload size `shape` needs (checked before any payload is read).
    public static func validateHeader(
        _ header: VhostUserHeader, for request: VhostUserRequest, shape: VhostUserReplyShape
    ) throws(VhostUserError) {
        guard header.request == request.rawValue else {
            throw .badReply(request, "reply type \(header.request), expected \(request.rawValue)")
        }
        guard header.flags & VhostUserFlags.versionMask == VhostUserFlags.version else {
            throw .badReply(request, "version \(header.flags & VhostUserFlags.versionMask), expected 1")
        }
        guard header.flags & VhostUserFlags.reply != 0 else {
            throw .badReply(request, "REPLY flag not set (flags 0x\(String(header.flags, radix: 16)))")
        }
        // Bits above NEED_REPLY are reserved; a reply may echo NEED_REPLY (libvhost-user does).
        guard header.flags & ~(VhostUserFlags.versionMask | VhostUserFlags.reply | VhostUserFlags.needReply) == 0 else {
            throw .badReply(request, "reserved flags set (0x\(String(header.flags, radix: 16)))")
        }
        if case .config = shape, header.size == 0 {
            // vhost-user.rst: a back-end that cannot answer GET_CONFIG replies with no payload.
            throw .badReply(request, "empty config payload (the back-end failed GET_CONFIG)")
        }
        guard Int(header.size) == shape.payloadSize else {
            throw .badReply(request, "payload size \(header.size), expected \(shape.payloadSize)")
        }
    }

    /// Parses a whole reply (header and payload) that came with
    /// `descriptorCount` descriptors, and returns its payload.
    public static func parse(
        _ bytes: [UInt8], descriptorCount: Int, for request: VhostUserRequest, shape: VhostUserReplyShape
    ) throws(VhostUserError) -> [UInt8] {
        guard let header = VhostUserHeader(bytes) else {
            throw .badReply(request, "\(bytes.count) bytes, shorter than a header")
        }
        guard descriptorCount == 0 else {
            throw .badReply(request, "\(descriptorCount) descriptors attached, expected none")
        }
        try validateHeader(header, for: request, shape: shape)
        let payload = Array(bytes.dropFirst(VhostUserHeader.byteCount))
        guard payload.count == Int(header.size) else {
            throw .badReply(request, "\(payload.count) payload bytes, header says \(header.size)")
        }
        return payload
    }

    /// The u64 of a validated `.u64` payload.
    public static func u64(_ payload: [UInt8], for request: VhostUserRequest) throws(VhostUserError) -> UInt64 {
        guard payload.count == 8 else { throw .badReply(request, "payload size \(payload.count), expected 8") }
        return payload.u64(at: 0)
    }

    /// The (index, num) of a validated `.vringState` payload; the index must be `queue`.
    public static func vringState(_ payload: [UInt8], queue: UInt32, for request: VhostUserRequest)
        throws(VhostUserError) -> UInt32
    {
        guard payload.count == 8 else { throw .badReply(request, "payload size \(payload.count), expected 8") }
        let index = payload.u32(at: 0)
        guard index == queue else { throw .badReply(request, "state for queue \(index), expected \(queue)") }
        return payload.u32(at: 4)
    }

    /// The config bytes of a validated `.config` payload, which must echo `offset` and `size`.
    public static func config(_ payload: [UInt8], offset: UInt32, size: UInt32, for request: VhostUserRequest)
        throws(VhostUserError) -> [UInt8]
    {
        guard payload.count == 12 + Int(size) else {
            throw .badReply(request, "payload size \(payload.count), expected \(12 + Int(size))")
        }
        guard payload.u32(at: 0) == offset, payload.u32(at: 4) == size else {
            throw .badReply(
                request,
                "config for offset \(payload.u32(at: 0)) size \(payload.u32(at: 4)), expected \(offset) and \(size)")
        }
        return Array(payload[12...])
    }
}

/// Little-endian field access on byte arrays (the protocol is little-endian, as this machine is).
extension Array where Element == UInt8 {
    /// The little-endian u32 at `offset` (the caller checked the bounds).
    package func u32(at offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(self[offset + $1]) << (8 * UInt32($1)) }
    }

    /// The little-endian u64 at `offset` (the caller checked the bounds).
    package func u64(at offset: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(self[offset + $1]) << (8 * UInt64($1)) }
    }

    /// Appends `value` little-endian.
    package mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        var v = value.littleEndian
        Swift.withUnsafeBytes(of: &v) { append(contentsOf: $0) }
    }
}
