#if os(Linux)
import Foundation
public import IrqFdCore
public import MSIX
public import PCI
public import VhostUser

/// Everything a successor VMM needs to go on with a ``VirtioPCIDevice`` of
/// `DeviceType` where its predecessor left it, without the guest or the
/// vhost-user backend noticing: the PCI configuration, the virtio-pci
/// transport (virtio 1.2 section 4.1.4.3), the MSI-X table and PBA, the
/// device type's own state, and the vhost-user session as the backend knows
/// it. What crosses as descriptors (``VirtioPCIDevice/freeze(timeout:)``
/// gives them, ``VirtioPCIDevice/resume(host:state:descriptors:)`` takes them)
/// travels beside it, in the order ``descriptorCount`` documents.
///
/// Versioned: ``encoded()`` writes ``currentVersion``; ``init(decoding:)``
/// reads every version in ``readableVersions`` and refuses any other, so a
/// successor that does not know a state leaves the guest with its
/// predecessor, and a newer build reads the state of the previous release.
/// Version 1 is JSON (UTF-8): `format` ("virtio-pci-device"), `version` (1),
/// then the fields below by name.
public struct VirtioDeviceHandOffState<DeviceType: VirtioDeviceType & Codable>: Sendable, Codable {
    /// The version this build writes.
    public static var currentVersion: Int { 1 }
    /// The versions this build reads.
    public static var readableVersions: ClosedRange<Int> { 1...1 }
    /// The `format` field every version starts with.
    public static var format: String { "virtio-pci-device" }

    /// Always ``format``.
    public var format: String
    /// The version of the layout.
    public var version: Int
    /// The device type (its queues, MAC, tag: what was chosen when the device was made).
    public var deviceType: DeviceType
    /// How the device delivers its interrupts (the successor delivers the same way).
    public var delivery: String
    /// The features the backend offered at the handshake.
    public var backendFeatures: UInt64
    /// The features offered to the guest.
    public var offeredFeatures: UInt64
    /// The device-specific configuration as the guest reads it (negotiated
    /// once, at creation: the successor does not ask the backend again).
    public var deviceConfiguration: [UInt8]
    /// The PCI configuration header's writable registers.
    public var pci: PCIHandOffState
    /// The virtio-pci transport.
    public var transport: VirtioTransportHandOffState
    /// The MSI-X function: table, control bits and PBA (`MsixEmulator.save()`).
    public var msix: MsixSavedState
    /// The vectors that have a route, ascending: each one's event crosses as a descriptor.
    public var routedVectors: [Int]
    /// The vhost-user session.
    public var session: VhostUserSessionHandOffState

    /// The descriptors that travel with this state, in this order:
    /// 1. the vhost-user socket, if ``VhostUserSessionHandOffState/connected``;
    /// 2. each queue's kick eventfd, queue 0 first (the backend holds them;
    ///    the successor binds its doorbells to them);
    /// 3. each queue's own call eventfd, queue 0 first (the call fd of a queue
    ///    with no vector, and every queue's with userspace delivery);
    /// 4. each routed vector's event, in ``routedVectors`` order (the call fds
    ///    the backend holds with irqfd or relay delivery).
    public var descriptorCount: Int {
        (session.connected ? 1 : 0) + 2 * transport.queues.count + routedVectors.count
    }

    /// Encodes the state (version ``currentVersion``).
    public func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Every field is a plain number, string, array or struct of them: encoding cannot fail.
        guard let data = try? encoder.encode(self) else { preconditionFailure("a hand-off state did not encode") }
        return [UInt8](data)
    }

    /// A state of version ``currentVersion`` from its parts.
    public init(
        deviceType: DeviceType, delivery: InterruptDelivery, backendFeatures: UInt64, offeredFeatures: UInt64,
        deviceConfiguration: [UInt8], pci: PCIHandOffState, transport: VirtioTransportHandOffState,
        msix: MsixSavedState, routedVectors: [Int], session: VhostUserSessionHandOffState
    ) {
        format = Self.format
        version = Self.currentVersion
        self.deviceType = deviceType
        self.delivery = delivery.rawValue
        self.backendFeatures = backendFeatures
        self.offeredFeatures = offeredFeatures
        self.deviceConfiguration = deviceConfiguration
        self.pci = pci
        self.transport = transport
        self.msix = msix
        self.routedVectors = routedVectors
        self.session = session
    }

    /// Decodes a state ``encoded()`` wrote, in any of ``readableVersions``.
    public init(decoding bytes: [UInt8]) throws(VirtioHandOffError) {
        let data = Data(bytes)
        let decoder = JSONDecoder()
        guard let header = try? decoder.decode(HandOffStateHeader.self, from: data), header.format == Self.format else {
            throw .malformed("not a \(Self.format) hand-off state")
        }
        guard Self.readableVersions.contains(header.version) else {
            throw .unsupportedVersion(header.version, readable: Self.readableVersions)
        }
        do { self = try decoder.decode(Self.self, from: data) } catch {
            throw .malformed("\(error)")
        }
        guard deviceType.queueCount == transport.queues.count else {
            throw .malformed("\(transport.queues.count) queues for a \(deviceType.name) with \(deviceType.queueCount)")
        }
        guard InterruptDelivery(rawValue: delivery) != nil else { throw .malformed("delivery \(delivery)") }
    }
}

/// What every version of a hand-off state starts with.
private struct HandOffStateHeader: Decodable {
    var format: String
    var version: Int
}

/// The PCI configuration header's writable registers (PCI Local Bus spec
/// 6.2): what `PCIConfigurationSpace.restore(command:barValues:interruptLine:)` takes.
public struct PCIHandOffState: Hashable, Sendable, Codable {
    /// Command.
    public var command: UInt16
    /// The BARs as the guest wrote them.
    public var barValues: [UInt32]
    /// Interrupt Line.
    public var interruptLine: UInt8

    /// A header's state.
    public init(command: UInt16, barValues: [UInt32], interruptLine: UInt8) {
        self.command = command
        self.barValues = barValues
        self.interruptLine = interruptLine
    }
}

/// The virtio-pci transport as the guest left it (the common configuration,
/// virtio 1.2 section 4.1.4.3; ISR, section 4.1.4.5) and what the device
/// did with it on the backend.
public struct VirtioTransportHandOffState: Hashable, Sendable, Codable {
    /// The call fd a backend ring was given: encoded as the vector's number, or `"own"`.
    public enum CallSource: Hashable, Sendable, Codable {
        /// The route event of this MSI-X vector.
        case vector(UInt16)
        /// The queue's own call eventfd (no vector, or userspace delivery).
        case own

        /// Decodes a vector number or `"own"`.
        public init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let vector = try? container.decode(UInt16.self) {
                self = .vector(vector)
            } else if try container.decode(String.self) == "own" {
                self = .own
            } else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "neither a vector nor \"own\"")
            }
        }

        /// Encodes the vector's number, or `"own"`.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .vector(let v): try container.encode(v)
            case .own: try container.encode("own")
            }
        }
    }

    /// One virtqueue.
    public struct Queue: Hashable, Sendable, Codable {
        /// queue_size.
        public var size: UInt16
        /// queue_msix_vector.
        public var vector: UInt16
        /// queue_enable.
        public var enabled: Bool
        /// queue_desc.
        public var descriptor: UInt64
        /// queue_driver (the available ring).
        public var driver: UInt64
        /// queue_device (the used ring).
        public var device: UInt64
        /// A notify latches in the queue's kick eventfd (DRIVER_OK until reset).
        public var notifiable: Bool
        /// The queue runs (on the backend, or in the VMM for a queue the VMM serves).
        public var running: Bool
        /// A queue the VMM serves: the next available-ring index it serves.
        public var nextAvailable: UInt16
        /// Started on the backend's connection and not stopped yet: the
        /// backend holds its kick and ``backendCall``, and the next reset
        /// stops it (GET_VRING_BASE).
        public var startedOnBackend: Bool
        /// The driver and device areas as started (a reset reads their indices).
        public var startedRings: [UInt64]?
        /// Its doorbell is bound (KVM_IOEVENTFD): the successor binds it again, to the same kick eventfd.
        public var doorbellBound: Bool
        /// The call fd the backend was given for the ring, if it was started.
        public var backendCall: CallSource?

        /// A queue's state.
        public init(
            size: UInt16, vector: UInt16, enabled: Bool, descriptor: UInt64, driver: UInt64, device: UInt64,
            notifiable: Bool, running: Bool, nextAvailable: UInt16, startedOnBackend: Bool, startedRings: [UInt64]?,
            doorbellBound: Bool, backendCall: CallSource?
        ) {
            self.size = size
            self.vector = vector
            self.enabled = enabled
            self.descriptor = descriptor
            self.driver = driver
            self.device = device
            self.notifiable = notifiable
            self.running = running
            self.nextAvailable = nextAvailable
            self.startedOnBackend = startedOnBackend
            self.startedRings = startedRings
            self.doorbellBound = doorbellBound
            self.backendCall = backendCall
        }
    }

    /// device_status.
    public var status: UInt8
    /// ISR status (read to clear).
    public var isr: UInt8
    /// device_feature_select.
    public var deviceFeatureSelect: UInt32
    /// driver_feature_select.
    public var driverFeatureSelect: UInt32
    /// driver_feature, both halves: the features the driver accepted.
    public var driverFeatures: UInt64
    /// msix_config.
    public var configVector: UInt16
    /// queue_select.
    public var queueSelect: UInt16
    /// config_generation.
    public var configGeneration: UInt8
    /// Each queue, queue 0 first.
    public var queues: [Queue]
    /// Resets so far: an outcome from before a reset changes nothing (the device's epoch).
    public var epoch: Int
    /// The backend holds the current route events as call fds (a reset retires them).
    public var callsHandedOut: Bool
    /// The connection was closed on purpose (`disconnect()`).
    public var disconnectedOnPurpose: Bool
    /// The deadline of one backend operation, nanoseconds.
    public var operationTimeoutNanoseconds: Int64
    /// Resets that stopped running queues, and starts (the host-side counts go on).
    public var resets: Int
    /// Times DRIVER_OK started the queues.
    public var starts: Int

    /// A transport's state.
    public init(
        status: UInt8, isr: UInt8, deviceFeatureSelect: UInt32, driverFeatureSelect: UInt32, driverFeatures: UInt64,
        configVector: UInt16, queueSelect: UInt16, configGeneration: UInt8, queues: [Queue], epoch: Int,
        callsHandedOut: Bool, disconnectedOnPurpose: Bool, operationTimeoutNanoseconds: Int64, resets: Int,
        starts: Int
    ) {
        self.status = status
        self.isr = isr
        self.deviceFeatureSelect = deviceFeatureSelect
        self.driverFeatureSelect = driverFeatureSelect
        self.driverFeatures = driverFeatures
        self.configVector = configVector
        self.queueSelect = queueSelect
        self.configGeneration = configGeneration
        self.queues = queues
        self.epoch = epoch
        self.callsHandedOut = callsHandedOut
        self.disconnectedOnPurpose = disconnectedOnPurpose
        self.operationTimeoutNanoseconds = operationTimeoutNanoseconds
        self.resets = resets
        self.starts = starts
    }
}

/// The vhost-user session as the backend knows it: the same connection
/// (its socket crosses as a descriptor) and what was negotiated and sent on it.
public struct VhostUserSessionHandOffState: Hashable, Sendable, Codable {
    /// The socket the backend listens on (a reset after the backend died reconnects there).
    public var socketPath: String
    /// Whether the connection was open: its socket is then the first descriptor.
    public var connected: Bool
    /// Which connection of the device's this is (0 for the first; a reconnection counts on).
    public var connection: Int
    /// Times the device replaced a closed connection.
    public var reconnects: Int
    /// How long one exchange may take, nanoseconds.
    public var exchangeTimeoutNanoseconds: Int64
    /// What the session negotiated and sent: features, protocol features,
    /// the memory table (with the predecessor's user addresses, which the
    /// backend mapped), each ring's size.
    public var negotiated: VhostUserFrontend.HandOffState

    /// A session's state.
    public init(
        socketPath: String, connected: Bool, connection: Int, reconnects: Int, exchangeTimeoutNanoseconds: Int64,
        negotiated: VhostUserFrontend.HandOffState
    ) {
        self.socketPath = socketPath
        self.connected = connected
        self.connection = connection
        self.reconnects = reconnects
        self.exchangeTimeoutNanoseconds = exchangeTimeoutNanoseconds
        self.negotiated = negotiated
    }
}

/// Why a hand-off step failed. A failed freeze leaves the device running as
/// before; a failed resume leaves nothing behind (the descriptors it was
/// given are closed).
public enum VirtioHandOffError: Error, CustomStringConvertible {
    /// The device is not where the step needs it (freeze twice, thaw a running device...).
    case wrongPhase(String)
    /// A backend operation was still under way when the freeze's time was up.
    case busy(String)
    /// A state of a version this build does not read.
    case unsupportedVersion(Int, readable: ClosedRange<Int>)
    /// Not a state, or not one that fits (the device type, the descriptors).
    case malformed(String)
    /// A route could not be made, armed or disarmed.
    case irqfd(IrqFdError)
    /// The MSI-X state could not be restored.
    case msix(MsixError)
    /// A doorbell could not be bound (KVM_IOEVENTFD), and the errno.
    case doorbell(SystemCallError)

    public var description: String {
        switch self {
        case .wrongPhase(let why): "hand-off: \(why)"
        case .busy(let why): "hand-off: busy: \(why)"
        case .unsupportedVersion(let v, let readable): "hand-off state version \(v); this build reads \(readable)"
        case .malformed(let why): "malformed hand-off state: \(why)"
        case .irqfd(let e): "hand-off: irqfd: \(e)"
        case .msix(let e): "hand-off: MSI-X: \(e)"
        case .doorbell(let e): "hand-off: doorbell: \(e)"
        }
    }
}
#endif
