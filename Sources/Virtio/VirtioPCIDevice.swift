#if os(Linux)
import Foundation
import Dispatch
import IrqFdCore
import IrqFdLinux
public import IrqFdRelay
public import Logging
public import MSIX
public import PCI
public import SystemPackage
public import VhostUser
import Synchronization

/// A virtio 1.x (modern only) PCI device whose queues are served by a
/// vhost-user backend in another process: the one virtio-pci transport
/// (virtio 1.2 section 4.1), with what is specific to a device type in
/// `DeviceType` (see ``VirtioDeviceType`` and the Virtio DocC article). Every
/// type sits at 00:02.0 with the same BARs, capabilities, notify layout and
/// MSI-X layout (queues + 1 vectors).
///
/// The device is a state machine over device_status (virtio 1.2 sections 2.1
/// and 3.1): reset -> ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK, with
/// a write of 0 resetting from anywhere. The VMM is on neither I/O path once
/// the queues run: a notify is a doorbell (KVM_IOEVENTFD) on the queue's kick
/// eventfd, and a completion is the backend signalling the queue's call fd,
/// which is the MSI-X vector's irqfd route event (`MsixEmulator.event(for:)`).
///
/// A guest access never waits on the backend. What needs the backend
/// (DRIVER_OK starting the queues, a reset stopping them, reconnecting, a new
/// call fd) runs on the device's worker, one operation at a time, each with
/// one deadline (``operationTimeout``) however many messages it takes: when
/// it passes, the watcher thread shuts the socket down and the operation
/// fails at once. The write that asked for it returns at once. After a reset
/// write, device_status reads non-zero until the rings are stopped and 0
/// afterwards (virtio 1.2 section 4.1.4.3.1: the driver waits for 0), within
/// the deadline whatever the backend does.
///
/// A backend that dies is noticed at once, even while idle: the device's
/// watcher thread watches the socket for a hang-up. The device then closes the
/// connection, sets DEVICE_NEEDS_RESET and ISR bit 1, raises msix_config and
/// logs one rate-limited line (``logger``); the driver's reset reconnects to
/// ``socketPath`` and its re-initialisation runs against the new backend
/// (``reconnectCount``). No wait on the socket is without a deadline.
///
/// Thread safety: guest accesses (any vCPU), host calls, the worker and the
/// watcher share one lock, which is never held across a backend message,
/// a doorbell binding or the retirement of route events, so a vCPU waits for
/// it at most as long as another register access takes. The MSI-X
/// emulator's lock and the watcher's lock are taken inside it, never around
/// it; an MSI-X table or PBA access holds it only to decode the address.
public final class VirtioPCIDevice<DeviceType: VirtioDeviceType>: PCIFunction, BackendWatcherClient {
    /// device_status bits.
    public typealias Status = VirtioStatus

    /// The PCI slot: 00:02.0.
    public static var slot: Int { 2 }
    /// BAR1: the MSI-X table (offset 0) and PBA (offset 0x800).
    public static var msixBase: UInt64 { 0xFE11_0000 }
    /// BAR1's size.
    public static var msixSize: UInt64 { 0x1000 }
    /// The PBA's offset in BAR1.
    public static var pbaOffset: UInt32 { 0x800 }
    /// BAR4: the virtio structures.
    public static var virtioBase: UInt64 { 0xFE20_0000 }
    /// BAR4's size.
    public static var virtioSize: UInt64 { 0x4000 }
    /// The common configuration's offset in BAR4.
    public static var commonOffset: UInt64 { 0x0000 }
    /// The ISR's offset in BAR4.
    public static var isrOffset: UInt64 { 0x1000 }
    /// The device configuration's offset in BAR4.
    public static var deviceOffset: UInt64 { 0x2000 }
    /// The notify structure's offset in BAR4.
    public static var notifyOffset: UInt64 { 0x3000 }
    /// notify_off_multiplier: queue q's notify address is notifyBase + 4q.
    public static var notifyMultiplier: UInt32 { 4 }
    /// The guest-physical address queue `q` is notified at.
    public static func notifyAddress(queue q: Int) -> UInt64 {
        virtioBase + notifyOffset + UInt64(notifyMultiplier) * UInt64(q)
    }
    /// The largest (and offered) queue size.
    public static var maxQueueSize: UInt16 { 256 }
    /// Notify addresses the notify structure has room for.
    static var notifySlots: Int { 8 }
    /// The MSI-X capability's configuration offset (last in the list).
    public static var msixCapabilityOffset: Int { 0x98 }
    /// The "no vector" value of msix_config and queue_msix_vector.
    public static var noVector: UInt16 { 0xFFFF }

    /// What kind of device this is.
    public let deviceType: DeviceType
    /// The backend connection: the current one (a reset after the backend
    /// died makes a new one, see ``reconnectCount``).
    public var frontend: VhostUserFrontend { state.withLock { $0.session.frontend } }
    /// The socket the backend listens on; a reset reconnects here.
    public let socketPath: String
    /// The device's MSI-X function (queues + 1 vectors).
    public let emulator: MsixEmulator
    /// How completions reach the guest.
    public let delivery: InterruptDelivery
    /// The relay partition, when `delivery` is `.relay`.
    public let relay: RelayIrqFd?
    /// The emulator's partition (irqfd and relay delivery): its routes'
    /// events are retired when a backend connection stops serving the queues.
    let routes: ConnectionScopedPartition?
    /// Queues the device has.
    public var queueCount: Int { deviceType.queueCount }
    /// Features offered to the guest.
    public let offeredFeatures: UInt64
    /// The device-specific configuration as the guest reads it.
    public let deviceConfiguration: [UInt8]

    /// The VM's RAM and doorbells, not the VMM: the VMM holds the device, and
    /// holding it back would be a cycle.
    let memory: any GuestMemoryMap
    let doorbells: any Doorbells
    let backendFeatures: UInt64
    let kicks: [EventFD]
    /// Call fds for `.userspace` delivery (a VMM thread waits on them) and for
    /// queues with no vector (nobody waits: NO_VECTOR means no interrupt),
    /// retired with the route events when a connection stops serving the queues.
    let calls: ConnectionScopedCalls
    let watcher: CallPoller
    /// Waits on the kicks of the queues the VMM serves (nil: the backend serves every queue).
    let vmmQueues: VMMQueuePoller?
    /// Runs the backend operations, one at a time, off the vCPUs' path.
    let worker: DispatchQueue
    /// The operations queued on ``worker`` and not yet done.
    let pending = DispatchGroup()
    /// How long a guest write that queued an operation waits for it before
    /// returning: a backend that answers at once (as qemu-storage-daemon
    /// does) has stopped or started the rings by then, so device_status
    /// reads 0 (or DRIVER_OK) at the next access; a slow one costs the vCPU
    /// no more than this.
    static var briefWaitMilliseconds: Int { 3 }
    /// Call signals seen by the `.userspace` watcher, and flood warnings (see ``CallFloodMonitor``).
    public let callMonitor: CallFloodMonitor
    let state: Mutex<DeviceState>
    /// Where the device is in a hand-off to a successor VMM (see ``freeze(timeout:)``).
    let handOff = Mutex(HandOffPhase.running)

    struct Queue {
        var size: UInt16 = VirtioPCIDevice.maxQueueSize
        var vector: UInt16 = VirtioPCIDevice.noVector
        var enabled = false
        var descriptor: UInt64 = 0
        var driver: UInt64 = 0
        var device: UInt64 = 0
        /// From DRIVER_OK until reset a notify latches in its kick eventfd:
        /// through the doorbell once the worker has bound it, else through the exit.
        var notifiable = false
        /// Started on the backend (the worker sent its kick fd).
        var running = false
        /// A VMM-served queue: the next available-ring index to serve.
        var nextAvailable: UInt16 = 0
    }

    struct DeviceState {
        /// The backend connection; replaced when a reset reconnects.
        var session: VhostUserSession
        /// ISR status (virtio 1.2 section 4.1.4.5): bit 1, configuration change; read to clear.
        var isr: UInt8 = 0
        var log: FailureLog
        var status: UInt8 = 0
        var deviceFeatureSelect: UInt32 = 0
        var driverFeatureSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var configVector: UInt16 = VirtioPCIDevice.noVector
        var queueSelect: UInt16 = 0
        var configGeneration: UInt8 = 0
        var queues: [Queue]
        /// The PCI configuration header (Command and the fixed BARs).
        var pci: PCIConfigurationSpace
        var counters = VirtioCounters()
        var lastBackendError: VhostUserError?
        var resets = 0
        var starts = 0
        /// A reset is under way on the worker: device_status reads `status`
        /// (the value before the reset, not 0) until it is done.
        var resetting = false
        /// Bumped by every reset: the outcome of an operation queued before it is stale.
        var epoch = 0
        /// Operations queued on the worker and not yet finished.
        var operations = 0
        /// Queues the worker started on the current connection and no reset stopped yet.
        var started: Set<Int> = []
        /// The driver and device areas of the rings in `started` (the reset reads their indices).
        var startedRings: [Int: (driver: UInt64, device: UInt64)] = [:]
        /// Queues whose doorbell the worker bound (KVM_IOEVENTFD) and no reset unbound yet.
        var doorbells: Set<Int> = []
        /// The deadline of one backend operation.
        var operationTimeout: Duration = .seconds(5)
        /// The backend was sent the route events since they were last retired.
        var callsHandedOut = false
        /// ``disconnect()`` closed the connection (until a reconnection): failures it causes are not reported.
        var disconnectedOnPurpose = false
    }

    /// Connects to the vhost-user backend at `socketPath`, negotiates as
    /// `deviceType` says, and makes the device (not yet plugged in: see
    /// ``attach(to:deviceType:socketPath:delivery:connectTimeout:)``).
    ///
    /// The connection and its negotiation run under one deadline,
    /// `connectTimeout` (5 s, like every backend operation, unless given),
    /// however many messages they take: a backend that answers slowly makes
    /// this fail with a timeout when it passes, not after a deadline per message.
    public init(
        host: any VirtioHost, deviceType: DeviceType, socketPath: String, delivery: InterruptDelivery = .irqfd,
        connectTimeout: Duration = .seconds(5)
    ) throws(VirtioError) {
        let queues = deviceType.queueCount
        guard queues >= 1, queues <= Self.notifySlots else {
            throw .configuration(
                "\(deviceType.name) has \(queues) queues; the transport serves 1...\(Self.notifySlots)")
        }
        guard
            let layout = MsixLayout(
                vectorCount: queues + 1, tableBIR: 1, tableOffset: 0, pbaBIR: 1, pbaOffset: Self.pbaOffset)
        else { throw .configuration("no MSI-X layout for \(queues + 1) vectors") }
        self.deviceType = deviceType
        callMonitor = CallFloodMonitor(device: deviceType.name)
        memory = host.guestMemory
        doorbells = host.doorbells
        self.delivery = delivery
        do { (emulator, relay, routes) = try Self.makeEmulator(delivery, layout: layout, host: host) } catch {
            throw .irqfd(error)
        }
        do {
            kicks = try (0..<queues).map { _ throws(IrqFdError) in try EventFD() }
            calls = try ConnectionScopedCalls(queues: queues)
        } catch { throw .irqfd(error) }

        self.socketPath = socketPath
        worker = DispatchQueue(label: "\(deviceType.name) worker")
        // Always a watcher: it watches the backend socket for a hang-up (an
        // idle device notices a dead backend), enforces each operation's
        // deadline, the first connection's included, and with `.userspace`
        // delivery it also waits on the call fds.
        let poller: CallPoller
        do { poller = try CallPoller(calls: delivery == .userspace ? calls : nil) } catch { throw .irqfd(error) }
        poller.start(name: deviceType.name)
        let negotiated: VhostUserSession.Negotiated
        let deadline = ContinuousClock.now + connectTimeout
        do {
            negotiated = try VhostUserSession.connect(
                socketPath: socketPath, deviceType: deviceType, timeout: connectTimeout
            ) { poller.arm(deadline: deadline, socket: $0.socket) }
            poller.disarm()
        } catch {
            poller.disarm()
            poller.stop()
            throw .backend(Self.timedOut(error, deadline: deadline))
        }
        backendFeatures = negotiated.features
        deviceConfiguration = negotiated.configuration
        offeredFeatures = deviceType.offeredFeatures(backend: backendFeatures)
        state = Mutex(
            DeviceState(
                session: VhostUserSession(socketPath: socketPath, frontend: negotiated.frontend),
                log: FailureLog(device: deviceType.name),
                queues: Array(repeating: Queue(), count: queues),
                pci: Self.configurationSpace(deviceType, configurationSize: negotiated.configuration.count)))
        watcher = poller
        let served = (0..<queues).filter { deviceType.isServedByVMM(queue: $0) }
        do { vmmQueues = served.isEmpty ? nil : try VMMQueuePoller(queues: served, kicks: kicks) } catch {
            negotiated.frontend.close()
            poller.stop()
            throw .irqfd(error)
        }
        watcher.report(to: self)
        watcher.watch(socket: negotiated.frontend.socket, connection: 0)
        vmmQueues?.start(device: self, name: deviceType.name)
    }

    /// A device a successor VMM goes on with (``resume(host:state:descriptors:)``):
    /// every part already made from the predecessor's state and descriptors.
    /// Sends nothing and starts no thread.
    init(resumed parts: ResumedParts) {
        deviceType = parts.deviceType
        callMonitor = CallFloodMonitor(device: parts.deviceType.name)
        memory = parts.memory
        doorbells = parts.doorbells
        delivery = parts.delivery
        (emulator, relay, routes) = (parts.emulator, parts.relay, parts.routes)
        (kicks, calls) = (parts.kicks, parts.calls)
        socketPath = parts.socketPath
        worker = DispatchQueue(label: "\(parts.deviceType.name) worker")
        backendFeatures = parts.backendFeatures
        deviceConfiguration = parts.deviceConfiguration
        offeredFeatures = parts.offeredFeatures
        state = Mutex(parts.state)
        (watcher, vmmQueues) = (parts.watcher, parts.vmmQueues)
    }

    deinit {
        vmmQueues?.stop()
        let frontend = state.withLock { $0.session.frontend }
        // An exchange still waiting on the backend fails at once.
        watcher.shutDownConnection()
        watcher.stop()
        frontend.close()
    }

    /// An MSI-X emulator delivering as `delivery` says (as
    /// `InterruptDelivery.makeEmulator` makes it), over a partition whose
    /// route events the device can retire (``ConnectionScopedPartition``).
    static func makeEmulator(
        _ delivery: InterruptDelivery, layout: MsixLayout, host: any VirtioHost
    ) throws(IrqFdError) -> (MsixEmulator, RelayIrqFd?, ConnectionScopedPartition?) {
        let injector = host.msiInjector
        let msix: MsixDelivery
        var relay: RelayIrqFd?
        var routes: ConnectionScopedPartition?
        switch delivery {
        case .irqfd:
            let scoped = ConnectionScopedPartition(host.irqfdPartition)
            routes = scoped
            msix = .irqfd(scoped, fallback: injector)
        case .relay:
            let partition = try RelayIrqFd(injector: injector)
            let scoped = ConnectionScopedPartition(partition)
            relay = partition
            routes = scoped
            msix = .irqfd(scoped)
        case .userspace: msix = .userspace(injector)
        }
        let emulator = MsixEmulator(layout: layout, delivery: msix)
        host.addCommitErrorListener(owner: emulator) { [weak emulator] in emulator?.reportCommitError($0) }
        return (emulator, relay, routes)
    }

    /// Makes a device of `deviceType` and plugs it into `host` at 00:02.0
    /// (BAR1 and BAR4 routed to it); `connectTimeout` bounds the first
    /// connection as in ``init(host:deviceType:socketPath:delivery:connectTimeout:)``.
    @discardableResult
    public static func attach(
        to host: any VirtioHost, deviceType: DeviceType, socketPath: String, delivery: InterruptDelivery = .irqfd,
        connectTimeout: Duration = .seconds(5)
    ) throws(VirtioError) -> VirtioPCIDevice {
        let device = try VirtioPCIDevice(
            host: host, deviceType: deviceType, socketPath: socketPath, delivery: delivery,
            connectTimeout: connectTimeout)
        host.plug(device, device: slot)
        return device
    }

    // MARK: - Host-side view

    /// device_status as the guest reads it.
    public var status: UInt8 { state.withLock { $0.status } }
    /// What the device ignored or refused.
    public var counters: VirtioCounters { state.withLock { $0.counters } }
    /// The backend error that set DEVICE_NEEDS_RESET, if any.
    public var lastBackendError: VhostUserError? { state.withLock { $0.lastBackendError } }
    /// Resets that stopped running queues.
    public var resetCount: Int { state.withLock { $0.resets } }
    /// Times DRIVER_OK started the queues.
    public var startCount: Int { state.withLock { $0.starts } }
    /// Times a reset (or DRIVER_OK) reconnected to a backend that had gone away.
    public var reconnectCount: Int { state.withLock { $0.session.reconnects } }
    /// Whether the device has a live backend connection (false from the
    /// moment a hang-up or failure is noticed until a reset reconnects).
    public var isBackendConnected: Bool { state.withLock { $0.session.frontend }.isConnected }
    /// Where the device logs backend failures and reconnections (swift-log;
    /// label `irqfd.` and the type's name, such as `irqfd.virtio-blk`): one
    /// line per event, at most one a second, the lines left out counted in the next.
    public var logger: Logger {
        get { state.withLock { $0.log.logger } }
        set { state.withLock { $0.log.logger = newValue } }
    }
    /// Backend events the rate limit kept out of the log so far (since the last line).
    public var suppressedLogLines: Int { state.withLock { $0.log.suppressed } }
    /// The descriptors the device holds for its current backend connection:
    /// the front-end's socket and the watcher's copy of it (a test checks
    /// that these very descriptors are closed once the connection is gone).
    public var connectionDescriptors: [FileDescriptor] {
        let socket = state.withLock { $0.session.frontend }.socket
        return [socket, watcher.watchedDescriptor].compactMap { $0 }
    }
    /// The deadline of one backend operation (a start, a reset, a
    /// reconnection), however many messages it takes; 5 s unless set.
    public var operationTimeout: Duration {
        get { state.withLock { $0.operationTimeout } }
        set { state.withLock { $0.operationTimeout = newValue } }
    }
    /// Operation deadlines that passed (the watcher shut the socket down).
    public var expiredDeadlines: Int { watcher.expiredDeadlines }
    /// Whether a reset is still under way (device_status reads non-zero until it is done).
    public var isResetting: Bool { state.withLock { $0.resetting } }
    /// Whether queue `q` runs on the backend.
    public func isRunning(queue q: Int) -> Bool { state.withLock { $0.queues[q].running } }
    /// Features the driver accepted.
    public var driverFeatures: UInt64 { state.withLock { $0.driverFeatures } }
    /// The eventfds this device owns (each queue's kick, and the call fd it
    /// keeps for NO_VECTOR and `.userspace`), closed in its deinit: a test
    /// checks that these very descriptors are closed after release.
    public var ownedDescriptors: [FileDescriptor] { kicks.map(\.fileDescriptor) + calls.descriptors }

    /// Writes device_status from the host as a guest write would do, then
    /// waits until the backend operations it started are done (a reset has
    /// stopped the rings, DRIVER_OK has started them or failed). Not on a vCPU:
    /// a guest write returns at once.
    public func writeStatus(_ value: UInt8) {
        state.withLock { writeStatus(value, &$0) }
        waitUntilIdle()
    }

    /// Waits until every backend operation queued so far has finished (each
    /// is bounded by ``operationTimeout``). For hosts and tests, never on a
    /// vCPU's path nor on the device's own threads.
    public func waitUntilIdle() { worker.sync {} }
}
#endif
