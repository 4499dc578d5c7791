#if os(Linux)
import VhostUser

/// The vhost-user side of a virtio device: the connection to the backend
/// that serves its queues, its negotiation, and the messages that start and
/// stop a ring. The transport decides when (DRIVER_OK, reset, a backend
/// that went away); this says how, in the order backends need.
///
/// Not thread-safe: the transport keeps it under its device lock.
struct VhostUserSession {
    /// The socket the backend listens on; a reconnect dials it again.
    let socketPath: String
    /// The current connection (replaced by ``reconnect(deviceType:required:)``).
    private(set) var frontend: VhostUserFrontend
    /// Which connection `frontend` is (the watcher names the one that hung up).
    private(set) var connection = 0
    /// Times a closed connection was replaced.
    private(set) var reconnects = 0

    /// A negotiated connection: the backend's features and the device
    /// configuration the device type made.
    struct Negotiated {
        var frontend: VhostUserFrontend
        var features: UInt64
        var configuration: [UInt8]
    }

    /// A session over a connection ``connect(socketPath:deviceType:)`` made.
    init(socketPath: String, frontend: VhostUserFrontend) {
        self.socketPath = socketPath
        self.frontend = frontend
    }

    /// Connects to the backend at `socketPath` and negotiates: the handshake
    /// with the type's protocol features, then the type's own checks and
    /// configuration. Closes the connection on failure.
    static func connect(socketPath: String, deviceType: some VirtioDeviceType) throws(VhostUserError) -> Negotiated {
        let connection = try VhostUserFrontend(socketPath: socketPath)
        do throws(VhostUserError) {
            let features = try connection.handshake(wantedProtocolFeatures: deviceType.wantedProtocolFeatures)
            let configuration = try deviceType.negotiate(connection)
            return Negotiated(frontend: connection, features: features, configuration: configuration)
        } catch {
            connection.close()
            throw error
        }
    }

    /// Replaces the closed connection with a new one, negotiated as at
    /// creation. The backend must still offer `required` (the features the
    /// device offered the guest that the backend implements); the device
    /// configuration stays the one read at creation.
    mutating func reconnect(deviceType: some VirtioDeviceType, required: UInt64) throws(VhostUserError) {
        let negotiated = try Self.connect(socketPath: socketPath, deviceType: deviceType)
        guard negotiated.features & required == required else {
            negotiated.frontend.close()
            let offered = String(negotiated.features, radix: 16)
            let missing = String(required & ~negotiated.features, radix: 16)
            throw .unsupported(
                "the restarted backend offers features 0x\(offered), without 0x\(missing) that the device offered")
        }
        frontend = negotiated.frontend
        connection += 1
        reconnects += 1
    }

    /// SET_FEATURES with the driver's features (and PROTOCOL_FEATURES when the
    /// backend offered it), then SET_MEM_TABLE with every RAM region.
    func setUp(driverFeatures: UInt64, protocolBit: UInt64, memory: any GuestMemoryMap) throws(VhostUserError) {
        try frontend.setFeatures(driverFeatures | protocolBit)
        let regions = memory.regions.map {
            VhostUserMemoryRegion(
                guestPhysicalAddress: $0.guestPhysicalAddress, size: $0.size, userAddress: UInt64($0.hostAddress),
                mmapOffset: $0.offset, fd: $0.descriptor)
        }
        try frontend.setMemTable(regions)
    }

    /// Describes ring `q` to the backend: NUM, ADDR, BASE 0.
    func describeRing(
        _ q: Int, size: UInt16, descriptor: UInt64, driver: UInt64, device: UInt64
    ) throws(VhostUserError) {
        try frontend.setVringNum(queue: UInt32(q), size: UInt32(size))
        try frontend.setVringAddr(queue: UInt32(q), descriptor: descriptor, available: driver, used: device)
        try frontend.setVringBase(queue: UInt32(q), index: 0)
    }

    /// Gives ring `q` its call fd, then its kick fd: CALL before KICK. A
    /// backend may start processing the moment it has the kick fd, and
    /// qemu-storage-daemon 7.2 then signals a call fd it does not have yet
    /// ("vu_panic: Error writing eventfd") and drops the connection.
    func connectRing(_ q: Int, call: Int32, kick: Int32) throws(VhostUserError) {
        try frontend.setVringCall(queue: UInt32(q), fd: call)
        try frontend.setVringKick(queue: UInt32(q), fd: kick)
    }

    /// SET_VRING_ENABLE (only with protocol features: otherwise a ring runs once it has its kick).
    func enableRing(_ q: Int) throws(VhostUserError) { try frontend.setVringEnable(queue: UInt32(q), enabled: true) }

    /// SET_VRING_CALL: ring `q` signals `call` from now on.
    func setCall(_ q: Int, _ call: Int32) throws(VhostUserError) {
        try frontend.setVringCall(queue: UInt32(q), fd: call)
    }

    /// GET_VRING_BASE: the backend stops ring `q`.
    func stopRing(_ q: Int) throws(VhostUserError) { _ = try frontend.getVringBase(queue: UInt32(q)) }
}
#endif
