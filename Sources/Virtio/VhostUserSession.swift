#if os(Linux)
import SystemPackage
import VhostUser

/// The vhost-user side of a virtio device: the connection to the backend
/// that serves its queues, its negotiation, and the messages that start and
/// stop a ring. The transport decides when (DRIVER_OK, reset, a backend
/// that went away); this says how, in the order backends need.
///
/// A value the transport keeps under its device lock; the messages go out
/// on the device's worker (``VirtioPCIDevice``), never under that lock: the
/// front-end is thread-safe and one operation runs at a time.
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

    /// A session over a connection ``connect(socketPath:deviceType:)`` made
    /// (or a predecessor VMM made: then its `connection` and `reconnects` go on).
    init(socketPath: String, frontend: VhostUserFrontend, connection: Int = 0, reconnects: Int = 0) {
        self.socketPath = socketPath
        self.frontend = frontend
        self.connection = connection
        self.reconnects = reconnects
    }

    /// Connects to the backend at `socketPath` and negotiates: the handshake
    /// with the type's protocol features, then the type's own checks and
    /// configuration. `connected` sees the connection before its first
    /// message (the transport arms the operation's deadline on its socket).
    /// Closes the connection on failure.
    static func connect(
        socketPath: String, deviceType: some VirtioDeviceType, timeout: Duration = .seconds(5),
        connected: (VhostUserFrontend) -> Void = { _ in }
    ) throws(VhostUserError) -> Negotiated {
        let connection = try VhostUserFrontend(socketPath: socketPath, timeout: timeout)
        connected(connection)
        do throws(VhostUserError) {
            let features = try connection.handshake(wantedProtocolFeatures: deviceType.wantedProtocolFeatures)
            let configuration = try deviceType.negotiate(connection)
            return Negotiated(frontend: connection, features: features, configuration: configuration)
        } catch {
            connection.close()
            throw error
        }
    }

    /// A new connection to replace the closed one, negotiated as at creation
    /// (``adopt(_:)`` makes it current). The backend must still offer
    /// `required` (the features the device offered the guest that the
    /// backend implements); the device configuration stays the one read at creation.
    func dial(
        deviceType: some VirtioDeviceType, required: UInt64, timeout: Duration,
        connected: (VhostUserFrontend) -> Void
    ) throws(VhostUserError) -> VhostUserFrontend {
        let negotiated = try Self.connect(
            socketPath: socketPath, deviceType: deviceType, timeout: timeout, connected: connected)
        guard negotiated.features & required == required else {
            negotiated.frontend.close()
            let offered = String(negotiated.features, radix: 16)
            let missing = String(required & ~negotiated.features, radix: 16)
            throw .unsupported(
                "the restarted backend offers features 0x\(offered), without 0x\(missing) that the device offered")
        }
        return negotiated.frontend
    }

    /// Makes `frontend` (from ``dial(deviceType:required:timeout:connected:)``) the current connection.
    mutating func adopt(_ frontend: VhostUserFrontend) {
        self.frontend = frontend
        connection += 1
        reconnects += 1
    }

    /// SET_FEATURES with the driver's features (and PROTOCOL_FEATURES when the
    /// backend offered it), then SET_MEM_TABLE with every RAM region.
    ///
    /// A region the backend already knows (same guest-physical address, size
    /// and offset) keeps the user address it was sent: the backend maps the
    /// file, and the address only names the region for ring addresses. A VMM
    /// that took the session over from a predecessor maps RAM elsewhere, and
    /// libvhost-user (qemu-storage-daemon 7.2) translates the ring addresses
    /// it holds again at every SET_MEM_TABLE, stopped rings included, and
    /// drops the connection when they fall outside the new table ("remapping
    /// queue 0 during setmemtable").
    func setUp(driverFeatures: UInt64, protocolBit: UInt64, memory: any GuestMemoryMap) throws(VhostUserError) {
        try frontend.setFeatures(driverFeatures | protocolBit)
        let known = frontend.memoryRegions
        let regions = memory.regions.map { region in
            let sent = known.first {
                $0.guestPhysicalAddress == region.guestPhysicalAddress && $0.size == region.size
                    && $0.mmapOffset == region.offset
            }
            return VhostUserMemoryRegion(
                guestPhysicalAddress: region.guestPhysicalAddress, size: region.size,
                userAddress: sent?.userAddress ?? UInt64(region.hostAddress), mmapOffset: region.offset,
                fd: region.descriptor)
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
    func connectRing(_ q: Int, call: FileDescriptor, kick: FileDescriptor) throws(VhostUserError) {
        try frontend.setVringCall(queue: UInt32(q), descriptor: call)
        try frontend.setVringKick(queue: UInt32(q), descriptor: kick)
    }

    /// SET_VRING_ENABLE (only with protocol features: otherwise a ring runs once it has its kick).
    func enableRing(_ q: Int) throws(VhostUserError) { try frontend.setVringEnable(queue: UInt32(q), enabled: true) }

    /// SET_VRING_CALL: ring `q` signals `call` from now on.
    func setCall(_ q: Int, _ call: FileDescriptor) throws(VhostUserError) {
        try frontend.setVringCall(queue: UInt32(q), descriptor: call)
    }

    /// GET_VRING_BASE: the backend stops ring `q`. A reply that is not
    /// ring `q`'s state (another index, a malformed payload) means the stream
    /// is out of step with the backend: the connection is closed, so no later
    /// message believes it.
    func stopRing(_ q: Int) throws(VhostUserError) {
        do throws(VhostUserError) {
            _ = try frontend.getVringBase(queue: UInt32(q))
        } catch {
            if case .badReply = error { frontend.close() }
            throw error
        }
    }
}
#endif
