#if os(Linux)
import IrqFdLinux
import Synchronization
public import SystemPackage

/// A vhost-user front-end (vhost-user.rst): the VMM side of a device whose
/// queues another process serves. One connection, one request in flight at a
/// time; every reply is validated by ``VhostUserReplyParser`` and every wait
/// has a deadline, because the back-end is untrusted.
///
/// Once the stream is out of step with the back-end (a timeout, a malformed
/// reply, end of file) the connection is closed and every later call throws
/// ``VhostUserError/disconnected(_:)``: a back-end that broke the protocol once
/// is not believed again. A nonzero REPLY_ACK keeps the connection.
public final class VhostUserFrontend: Sendable {
    private struct State: Sendable {
        var channel: VhostUserChannel?
        var backendFeatures: UInt64 = 0
        var offeredProtocolFeatures: UInt64 = 0
        var protocolFeatures: UInt64 = 0
        var acceptedFeatures: UInt64 = 0
        var regions: [VhostUserMemoryRegion] = []
        var ringSizes: [UInt32: UInt32] = [:]
    }

    private let state: Mutex<State>
    private let sent = Atomic<Int>(0)
    /// The socket path this front-end connected to.
    public let socketPath: String
    /// How long any one exchange (send and reply) may take.
    public let timeout: Duration

    /// Connects to the back-end listening at `socketPath`. The socket closes
    /// in deinit or at ``close()``.
    public init(socketPath: String, timeout: Duration = .seconds(5)) throws(VhostUserError) {
        self.socketPath = socketPath
        self.timeout = timeout
        state = Mutex(State(channel: try VhostUserChannel.connect(to: socketPath, deadline: .now + timeout)))
    }

    /// A front-end over a connection another front-end negotiated (see
    /// ``init(resuming:socketPath:timeout:state:)``): `channel` (nil: the
    /// connection was already gone) with what that session negotiated and
    /// sent, and no message sent here.
    init(socketPath: String, timeout: Duration, channel: VhostUserChannel?, negotiated: HandOffState) {
        self.socketPath = socketPath
        self.timeout = timeout
        state = Mutex(
            State(
                channel: channel, backendFeatures: negotiated.backendFeatures,
                offeredProtocolFeatures: negotiated.offeredProtocolFeatures,
                protocolFeatures: negotiated.protocolFeatures, acceptedFeatures: negotiated.acceptedFeatures,
                regions: negotiated.memoryTable.map(\.placeholder),
                ringSizes: Dictionary(negotiated.ringSizes.map { ($0.queue, $0.size) }) { _, last in last }))
    }

    /// What this session negotiated and sent, as the back-end knows it (see ``HandOffState``).
    public var handOffState: HandOffState {
        state.withLock { s in
            HandOffState(
                backendFeatures: s.backendFeatures, offeredProtocolFeatures: s.offeredProtocolFeatures,
                protocolFeatures: s.protocolFeatures, acceptedFeatures: s.acceptedFeatures,
                memoryTable: s.regions.map(HandOffState.Region.init),
                ringSizes: s.ringSizes.sorted { $0.key < $1.key }.map { .init(queue: $0.key, size: $0.value) })
        }
    }

    /// Closes the connection; later calls throw `.disconnected`. Idempotent.
    public func close() {
        let channel = state.withLock { state in
            let channel = state.channel
            state.channel = nil
            return channel
        }
        // The channel's deinit (close(2)) runs here, outside the lock.
        _ = channel
    }

    /// Whether the connection is still open (not closed, not broken by a bad reply).
    public var isConnected: Bool { state.withLock { $0.channel != nil } }

    /// The connection's socket (borrowed) while it is open, else nil: a device
    /// polls it for the back-end hanging up, a test checks that it is closed afterwards.
    public var socket: FileDescriptor? { state.withLock { $0.channel?.socket.fileDescriptor } }

    /// ``socket``'s number, for callers that still poll a bare descriptor.
    public var socketDescriptor: Int32? { socket?.rawValue }

    /// Messages sent to the back-end so far (a device proves mask/unmask sent none).
    public var messagesSent: Int { sent.load(ordering: .relaxed) }

    /// The back-end's features, as the last GET_FEATURES replied.
    public var backendFeatures: UInt64 { state.withLock { $0.backendFeatures } }

    /// The protocol features negotiated by the last SET_PROTOCOL_FEATURES.
    public var protocolFeatures: UInt64 { state.withLock { $0.protocolFeatures } }

    /// The features sent by the last SET_FEATURES.
    public var acceptedFeatures: UInt64 { state.withLock { $0.acceptedFeatures } }

    /// The regions of the last SET_MEM_TABLE.
    public var memoryRegions: [VhostUserMemoryRegion] { state.withLock { $0.regions } }

    // MARK: The exchange

    /// Sends `request` with `payload` and `descriptors`; reads and validates
    /// the reply of `shape` (or a REPLY_ACK when `ack` and REPLY_ACK was
    /// negotiated, for a message that has no reply of its own).
    private func exchange(
        _ request: VhostUserRequest, payload: [UInt8], descriptors: [FileDescriptor] = [],
        reply shape: VhostUserReplyShape? = nil,
        update: (inout State) -> Void = { _ in }
    ) throws(VhostUserError) -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        return try state.withLock { (state: inout State) throws(VhostUserError) -> [UInt8] in
            guard let channel = state.channel else { throw .disconnected(request) }
            let ack = shape == nil && state.protocolFeatures & VhostUserProtocolFeature.replyAck != 0
            let flags = VhostUserFlags.version | (ack ? VhostUserFlags.needReply : 0)
            let message =
                VhostUserHeader(request: request.rawValue, flags: flags, size: UInt32(payload.count)).bytes + payload
            do throws(ChannelFailure) {
                try channel.send(message, passing: descriptors, deadline: deadline)
            } catch {
                state.channel = nil
                throw error.error(for: request)
            }
            sent.add(1, ordering: .relaxed)
            guard let expected = shape ?? (ack ? .u64 : nil) else {
                update(&state)
                return []
            }
            let replyPayload: [UInt8]
            do throws(VhostUserError) {
                replyPayload = try Self.readReply(channel, for: request, shape: expected, deadline: deadline)
            } catch {
                state.channel = nil
                throw error
            }
            if shape == nil {
                let status = try VhostUserReplyParser.u64(replyPayload, for: request)
                guard status == 0 else { throw .rejected(request, status: status) }
            }
            update(&state)
            return replyPayload
        }
    }

    /// Reads one reply: the header first (validated before any payload is read,
    /// so a hostile size cannot make this read more), then exactly its payload.
    private static func readReply(
        _ channel: VhostUserChannel, for request: VhostUserRequest, shape: VhostUserReplyShape,
        deadline: ContinuousClock.Instant
    ) throws(VhostUserError) -> [UInt8] {
        let head: UnixSocket.Message
        do throws(ChannelFailure) {
            head = try channel.receiveMessage(
                exactly: VhostUserHeader.byteCount, maximumDescriptors: 0, deadline: deadline)
        } catch {
            throw error.error(for: request)
        }
        guard head.received == 0 else {
            throw .badReply(request, "\(head.received) descriptors attached, expected none")
        }
        let header = VhostUserHeader(head.bytes)!
        try VhostUserReplyParser.validateHeader(header, for: request, shape: shape)
        let body: UnixSocket.Message
        do throws(ChannelFailure) {
            body = try channel.receiveMessage(exactly: Int(header.size), maximumDescriptors: 0, deadline: deadline)
        } catch {
            throw error.error(for: request)
        }
        return try VhostUserReplyParser.parse(
            head.bytes + body.bytes, descriptorCount: body.received, for: request, shape: shape)
    }

    private static func u64Payload(_ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLE(value)
        return bytes
    }

    private static func statePayload(_ queue: UInt32, _ num: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLE(queue)
        bytes.appendLE(num)
        return bytes
    }

    private func requireProtocolFeature(_ bit: UInt64, _ name: String, for request: VhostUserRequest)
        throws(VhostUserError)
    {
        guard protocolFeatures & bit != 0 else {
            throw .unsupported("\(request.name) needs protocol feature \(name), which was not negotiated")
        }
    }

    // MARK: Messages

    /// VHOST_USER_GET_FEATURES (vhost-user.rst, "Front-end message types"): the back-end's virtio features.
    public func getFeatures() throws(VhostUserError) -> UInt64 {
        let payload = try exchange(.getFeatures, payload: [], reply: .u64)
        let features = try VhostUserReplyParser.u64(payload, for: .getFeatures)
        state.withLock { $0.backendFeatures = features }
        return features
    }

    /// VHOST_USER_SET_FEATURES: the features the driver accepted; must be a
    /// subset of what GET_FEATURES offered.
    public func setFeatures(_ features: UInt64) throws(VhostUserError) {
        let offered = backendFeatures
        guard features & ~offered == 0 else {
            throw .unsupported(
                "SET_FEATURES 0x\(String(features, radix: 16)) has bits the back-end did not offer (0x\(String(offered, radix: 16)))"
            )
        }
        _ = try exchange(.setFeatures, payload: Self.u64Payload(features)) { $0.acceptedFeatures = features }
    }

    /// VHOST_USER_GET_PROTOCOL_FEATURES: needs VHOST_USER_F_PROTOCOL_FEATURES offered.
    public func getProtocolFeatures() throws(VhostUserError) -> UInt64 {
        guard backendFeatures & VhostUserFeature.protocolFeatures != 0 else {
            throw .unsupported(
                "GET_PROTOCOL_FEATURES: the back-end did not offer VHOST_USER_F_PROTOCOL_FEATURES (or GET_FEATURES was not sent)"
            )
        }
        let payload = try exchange(.getProtocolFeatures, payload: [], reply: .u64)
        let features = try VhostUserReplyParser.u64(payload, for: .getProtocolFeatures)
        state.withLock { $0.offeredProtocolFeatures = features }
        return features
    }

    /// VHOST_USER_SET_PROTOCOL_FEATURES: must be a subset of what the back-end offered.
    /// REPLY_ACK applies from the next message on.
    public func setProtocolFeatures(_ features: UInt64) throws(VhostUserError) {
        let offered = state.withLock { $0.offeredProtocolFeatures }
        guard features & ~offered == 0 else {
            throw .unsupported(
                "SET_PROTOCOL_FEATURES 0x\(String(features, radix: 16)) has bits the back-end did not offer (0x\(String(offered, radix: 16)))"
            )
        }
        _ = try exchange(.setProtocolFeatures, payload: Self.u64Payload(features)) { $0.protocolFeatures = features }
    }

    /// VHOST_USER_SET_OWNER: claims the session.
    public func setOwner() throws(VhostUserError) {
        _ = try exchange(.setOwner, payload: [])
    }

    /// VHOST_USER_GET_QUEUE_NUM: the most queues the back-end serves (protocol feature MQ).
    public func getQueueNum() throws(VhostUserError) -> UInt64 {
        try requireProtocolFeature(VhostUserProtocolFeature.multiQueue, "MQ", for: .getQueueNum)
        let payload = try exchange(.getQueueNum, payload: [], reply: .u64)
        return try VhostUserReplyParser.u64(payload, for: .getQueueNum)
    }

    /// VHOST_USER_GET_CONFIG ("Device config space description"; protocol
    /// feature CONFIG): `size` bytes of device config space from `offset`.
    public func getConfig(offset: UInt32, size: UInt32) throws(VhostUserError) -> [UInt8] {
        try requireProtocolFeature(VhostUserProtocolFeature.config, "CONFIG", for: .getConfig)
        guard size > 0, size <= VhostUserLimits.maxConfigSize,
            UInt64(offset) + UInt64(size) <= UInt64(VhostUserLimits.maxConfigSize)
        else {
            throw .unsupported(
                "GET_CONFIG offset \(offset) size \(size) is outside the \(VhostUserLimits.maxConfigSize)-byte config space"
            )
        }
        var payload: [UInt8] = []
        payload.appendLE(offset)
        payload.appendLE(size)
        payload.appendLE(UInt32(0))  // flags: VHOST_SET_CONFIG_TYPE_FRONTEND
        payload += [UInt8](repeating: 0, count: Int(size))
        let reply = try exchange(.getConfig, payload: payload, reply: .config(size: size))
        return try VhostUserReplyParser.config(reply, offset: offset, size: size, for: .getConfig)
    }

    /// VHOST_USER_SET_MEM_TABLE ("Multiple memory regions description"): 1...8
    /// regions, each region's fd by SCM_RIGHTS. The regions are kept to
    /// translate ring addresses in ``setVringAddr(queue:descriptor:available:used:)``.
    public func setMemTable(_ regions: [VhostUserMemoryRegion]) throws(VhostUserError) {
        guard (1...VhostUserLimits.maxRegions).contains(regions.count) else {
            throw .unsupported("SET_MEM_TABLE with \(regions.count) regions (1...\(VhostUserLimits.maxRegions))")
        }
        for region in regions {
            guard region.size > 0, region.fd.rawValue >= 0,
                region.guestPhysicalAddress.addingReportingOverflow(region.size).overflow == false,
                region.userAddress.addingReportingOverflow(region.size).overflow == false
            else {
                throw .unsupported(
                    "SET_MEM_TABLE region at 0x\(String(region.guestPhysicalAddress, radix: 16)) size \(region.size) fd \(region.fd.rawValue) is invalid"
                )
            }
        }
        var payload: [UInt8] = []
        payload.appendLE(UInt32(regions.count))
        payload.appendLE(UInt32(0))  // padding
        for region in regions {
            payload.appendLE(region.guestPhysicalAddress)
            payload.appendLE(region.size)
            payload.appendLE(region.userAddress)
            payload.appendLE(region.mmapOffset)
        }
        _ = try exchange(.setMemTable, payload: payload, descriptors: regions.map(\.fd)) { $0.regions = regions }
    }

    /// VHOST_USER_SET_VRING_NUM ("Vring state description"): the ring's size,
    /// a power of two of at most 32768 (virtio 1.2 section 2.7).
    public func setVringNum(queue: UInt32, size: UInt32) throws(VhostUserError) {
        guard size > 0, size <= 32768, size & (size - 1) == 0 else {
            throw .unsupported("SET_VRING_NUM queue \(queue) size \(size) is not a power of two in 1...32768")
        }
        _ = try exchange(.setVringNum, payload: Self.statePayload(queue, size)) { $0.ringSizes[queue] = size }
    }

    /// VHOST_USER_SET_VRING_ADDR ("Vring address description"). The addresses
    /// are GUEST-PHYSICAL: each ring (at the size SET_VRING_NUM gave) must lie
    /// inside one region of the last SET_MEM_TABLE, and is sent as that
    /// region's user address, as the protocol wants.
    public func setVringAddr(queue: UInt32, descriptor: UInt64, available: UInt64, used: UInt64) throws(VhostUserError)
    {
        let (regions, size) = state.withLock { ($0.regions, $0.ringSizes[queue]) }
        guard let size else { throw .unsupported("SET_VRING_ADDR queue \(queue) before SET_VRING_NUM") }
        guard !regions.isEmpty else { throw .unsupported("SET_VRING_ADDR queue \(queue) before SET_MEM_TABLE") }
        func translate(_ address: UInt64, _ length: UInt64, _ what: String) throws(VhostUserError) -> UInt64 {
            for region in regions {
                if let user = region.userAddress(of: address, length: length) { return user }
            }
            throw .unsupported(
                "SET_VRING_ADDR queue \(queue): the \(what) ring at 0x\(String(address, radix: 16)) (\(length) bytes) is not inside a memory region"
            )
        }
        let n = UInt64(size)
        let descriptorUser = try translate(descriptor, 16 * n, "descriptor")
        let availableUser = try translate(available, 6 + 2 * n, "available")
        let usedUser = try translate(used, 6 + 8 * n, "used")
        var payload: [UInt8] = []
        payload.appendLE(queue)
        payload.appendLE(UInt32(0))  // flags: no VHOST_VRING_F_LOG
        payload.appendLE(descriptorUser)
        payload.appendLE(usedUser)
        payload.appendLE(availableUser)
        payload.appendLE(UInt64(0))  // log address, unused
        _ = try exchange(.setVringAddr, payload: payload)
    }

    /// VHOST_USER_SET_VRING_BASE ("Vring state description"): the next available index the back-end reads.
    public func setVringBase(queue: UInt32, index: UInt32) throws(VhostUserError) {
        _ = try exchange(.setVringBase, payload: Self.statePayload(queue, index))
    }

    /// VHOST_USER_GET_VRING_BASE: stops the ring and returns its next available
    /// index (restart from it with SET_VRING_BASE, then KICK and CALL again:
    /// the back-end drops both descriptors).
    public func getVringBase(queue: UInt32) throws(VhostUserError) -> UInt32 {
        let payload = try exchange(.getVringBase, payload: Self.statePayload(queue, 0), reply: .vringState)
        return try VhostUserReplyParser.vringState(payload, queue: queue, for: .getVringBase)
    }

    private func vringFile(_ request: VhostUserRequest, queue: UInt32, descriptor: FileDescriptor?)
        throws(VhostUserError)
    {
        guard queue < 256 else { throw .unsupported("\(request.name) queue \(queue): the index field has 8 bits") }
        let value = UInt64(queue) | (descriptor == nil ? VhostUserLimits.invalidFdFlag : 0)
        _ = try exchange(request, payload: Self.u64Payload(value), descriptors: descriptor.map { [$0] } ?? [])
    }

    /// VHOST_USER_SET_VRING_KICK: the eventfd the driver's notifications signal
    /// (borrowed; nil sends the invalid-FD flag). Starts the ring.
    public func setVringKick(queue: UInt32, descriptor: FileDescriptor?) throws(VhostUserError) {
        try vringFile(.setVringKick, queue: queue, descriptor: descriptor)
    }

    /// VHOST_USER_SET_VRING_CALL: the eventfd the back-end signals on
    /// completions (borrowed; with irqfd it is the route's own event; nil sends
    /// the invalid-FD flag).
    public func setVringCall(queue: UInt32, descriptor: FileDescriptor?) throws(VhostUserError) {
        try vringFile(.setVringCall, queue: queue, descriptor: descriptor)
    }

    /// VHOST_USER_SET_VRING_ERR: the eventfd the back-end signals on ring
    /// errors (borrowed; nil sends the invalid-FD flag).
    public func setVringErr(queue: UInt32, descriptor: FileDescriptor?) throws(VhostUserError) {
        try vringFile(.setVringErr, queue: queue, descriptor: descriptor)
    }

    /// VHOST_USER_SET_VRING_ENABLE ("Vring state description"): needs
    /// VHOST_USER_F_PROTOCOL_FEATURES accepted in SET_FEATURES.
    public func setVringEnable(queue: UInt32, enabled: Bool) throws(VhostUserError) {
        guard acceptedFeatures & VhostUserFeature.protocolFeatures != 0 else {
            throw .unsupported("SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES accepted in SET_FEATURES")
        }
        _ = try exchange(.setVringEnable, payload: Self.statePayload(queue, enabled ? 1 : 0))
    }

    /// The session's opening: GET_FEATURES, then (when offered)
    /// GET_PROTOCOL_FEATURES and SET_PROTOCOL_FEATURES with `wanted` ∩ offered,
    /// then SET_OWNER. Returns the back-end's features.
    public func handshake(wantedProtocolFeatures: UInt64) throws(VhostUserError) -> UInt64 {
        let features = try getFeatures()
        if features & VhostUserFeature.protocolFeatures != 0 {
            let offered = try getProtocolFeatures()
            try setProtocolFeatures(wantedProtocolFeatures & offered)
        }
        try setOwner()
        return features
    }
}
#endif
