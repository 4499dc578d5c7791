#if os(Linux)
import Foundation
import Glibc
public import IrqFdCore
import IrqFdLinux
public import IrqFdRelay
import KVM
public import Logging
public import MSIX
public import TinyVM
public import VhostUser
import Synchronization

/// Why a virtio-blk device could not be made.
public enum VirtioError: Error, CustomStringConvertible {
    /// The vhost-user backend refused or failed, and how.
    case backend(VhostUserError)
    /// An eventfd or route could not be made.
    case irqfd(IrqFdError)
    /// The configuration is out of range, and why.
    case configuration(String)

    public var description: String {
        switch self {
        case .backend(let e): "vhost-user backend: \(e)"
        case .irqfd(let e): "irqfd: \(e)"
        case .configuration(let why): "configuration: \(why)"
        }
    }
}

/// What the device ignored or refused, by kind (virtio 1.2 says what a device
/// does with bad driver values; none is fatal).
public struct VirtioCounters: Hashable, Sendable, CustomStringConvertible {
    /// Writes to read-only fields (device_feature, num_queues, queue_notify_off, config_generation, device config).
    public var readOnlyWrites = 0
    /// Accesses of a size or alignment the field does not have, or outside a structure.
    public var badAccesses = 0
    /// queue_size writes that were not a power of two in 1...256.
    public var badQueueSizes = 0
    /// Ring addresses outside RAM (or misaligned) at DRIVER_OK: the queue was not started.
    public var badRingAddresses = 0
    /// Notifies for queues that do not exist, or whose value is not the queue index.
    public var badNotifies = 0
    /// Notifies that reached the VMM (no ioeventfd bound at that moment).
    public var notifyExits = 0
    /// Vectors outside the MSI-X table written to msix_config or queue_msix_vector.
    public var badVectors = 0
    /// device_status writes that cleared bits or skipped a step (virtio 1.2 section 3.1.1).
    public var badStatusWrites = 0
    /// Feature sets the device refused at FEATURES_OK.
    public var refusedFeatures = 0
    /// Backend calls that failed (each set DEVICE_NEEDS_RESET).
    public var backendFailures = 0

    public var description: String {
        "read-only writes \(readOnlyWrites), bad accesses \(badAccesses), bad queue sizes \(badQueueSizes), bad ring addresses \(badRingAddresses), bad notifies \(badNotifies), notify exits \(notifyExits), bad vectors \(badVectors), bad status writes \(badStatusWrites), refused features \(refusedFeatures), backend failures \(backendFailures)"
    }
}

/// A virtio 1.x (modern only) PCI block device at 00:02.0 whose queues are
/// served by a vhost-user backend in another process; the contract is
/// DESIGN.md's "virtio-blk over vhost-user" (see the Virtio DocC article).
///
/// The device is a state machine over device_status (virtio 1.2 sections 2.1
/// and 3.1): reset -> ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK, with
/// a write of 0 resetting from anywhere. The VMM is on neither I/O path once
/// the queues run: a notify is a KVM_IOEVENTFD on the queue's kick eventfd,
/// and a completion is the backend signalling the queue's call fd, which is
/// the MSI-X vector's irqfd route event (`MsixEmulator.event(for:)`).
///
/// A backend that dies is noticed at once, even while idle: the device's
/// poller thread watches the socket for a hang-up. The device then closes the
/// connection, sets DEVICE_NEEDS_RESET and ISR bit 1, raises msix_config and
/// logs one rate-limited line (``logger``); the driver's reset reconnects to
/// ``socketPath`` and its re-initialisation runs against the new backend
/// (``reconnectCount``). No wait on the socket is without a deadline.
///
/// Thread safety: guest accesses (any vCPU), host calls and the poller's
/// hang-up report are serialised by one lock, held across backend messages
/// so that a reset and a start never interleave. The MSI-X emulator's lock
/// and the poller's watch lock are taken inside it, never around it.
public final class VirtioBlkDevice: PCIFunction, MMIODevice {
    /// The PCI slot: 00:02.0.
    public static let slot = 2
    /// BAR1: the MSI-X table (offset 0) and PBA (offset 0x800).
    public static let msixBase: UInt64 = 0xFE11_0000
    /// BAR1's size.
    public static let msixSize: UInt64 = 0x1000
    /// The PBA's offset in BAR1.
    public static let pbaOffset: UInt32 = 0x800
    /// BAR4: the virtio structures.
    public static let virtioBase: UInt64 = 0xFE20_0000
    /// BAR4's size.
    public static let virtioSize: UInt64 = 0x4000
    /// Offsets of the virtio structures in BAR4.
    public static let commonOffset: UInt64 = 0x0000, isrOffset: UInt64 = 0x1000, deviceOffset: UInt64 = 0x2000, notifyOffset: UInt64 = 0x3000
    /// notify_off_multiplier: queue q's notify address is notifyBase + 4q.
    public static let notifyMultiplier: UInt32 = 4
    /// The guest-physical address queue `q` is notified at.
    public static func notifyAddress(queue q: Int) -> UInt64 { virtioBase + notifyOffset + UInt64(notifyMultiplier) * UInt64(q) }
    /// The largest (and offered) queue size.
    public static let maxQueueSize: UInt16 = 256
    /// The most queues `--queues` accepts.
    public static let maxQueues = 8
    /// The MSI-X capability's configuration offset (last in the list).
    public static let msixCapabilityOffset = 0x98
    /// The "no vector" value of msix_config and queue_msix_vector.
    public static let noVector: UInt16 = 0xFFFF

    /// device_status bits (virtio 1.2 section 2.1).
    public enum Status {
        /// The guest found the device.
        public static let acknowledge: UInt8 = 1
        /// The guest has a driver for it.
        public static let driver: UInt8 = 2
        /// The driver is ready: queues run.
        public static let driverOK: UInt8 = 4
        /// Feature negotiation is complete.
        public static let featuresOK: UInt8 = 8
        /// The device hit an error and needs a reset.
        public static let needsReset: UInt8 = 0x40
        /// The driver gave up.
        public static let failed: UInt8 = 0x80
    }

    /// Feature bits this device uses (virtio 1.2 sections 5.2.3 and 6).
    public enum Feature {
        /// VIRTIO_F_VERSION_1 (32): modern device; required.
        public static let version1: UInt64 = 1 << 32
        /// VIRTIO_BLK_F_MQ (12).
        public static let multiQueue: UInt64 = 1 << 12
        /// VHOST_USER_F_PROTOCOL_FEATURES (30): between the VMM and the backend only, never offered to the guest.
        public static let vhostProtocolFeatures: UInt64 = 1 << 30
        /// Block features that need nothing from the VMM: SIZE_MAX 1, SEG_MAX 2,
        /// GEOMETRY 4, RO 5, BLK_SIZE 6, FLUSH 9, TOPOLOGY 10, CONFIG_WCE 11,
        /// DISCARD 13, WRITE_ZEROES 14, and the split-ring features
        /// INDIRECT_DESC 28 and EVENT_IDX 29, which the backend implements.
        /// Never RING_PACKED (34), ACCESS_PLATFORM (33) or NOTIFICATION_DATA (38).
        public static let safeBackendFeatures: UInt64 =
            (1 << 1) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 13) | (1 << 14) | (1 << 28) | (1 << 29)
    }

    /// vhost-user protocol features the device asks for: MQ (0), REPLY_ACK (3), CONFIG (9).
    public static let wantedProtocolFeatures: UInt64 = (1 << 0) | (1 << 3) | (1 << 9)

    /// The backend connection: the current one (a reset after the backend
    /// died makes a new one, see ``reconnectCount``).
    public var frontend: VhostUserFrontend { state.withLock { $0.frontend } }
    /// The socket the backend listens on; a reset reconnects here.
    public let socketPath: String
    /// The device's MSI-X function (queues + 1 vectors).
    public let emulator: MsixEmulator
    /// How completions reach the guest.
    public let delivery: InterruptDelivery
    /// The relay partition, when `delivery` is `.relay`.
    public let relay: RelayIrqFd?
    /// Queues the device has (`--queues`).
    public let queueCount: Int
    /// Features offered to the guest.
    public let offeredFeatures: UInt64

    /// The VM's KVM handle and RAM, not the TinyVM: the TinyVM holds the
    /// device on its buses, and holding it back would be a cycle.
    private let vm: (vm: VirtualMachine, memory: GuestMemory)
    private let backendFeatures: UInt64
    private let deviceConfig: [UInt8]
    private let kicks: [EventFD]
    /// Call fds for `.userspace` delivery (a VMM thread waits on them) and for
    /// queues with no vector (nobody waits: NO_VECTOR means no interrupt).
    private let ownCalls: [EventFD]
    private let poller: CallPoller
    /// Call signals seen by the `.userspace` poller, and flood warnings (see ``CallFloodMonitor``).
    public let callMonitor = CallFloodMonitor()
    private let state: Mutex<DeviceState>

    struct Queue {
        var size: UInt16 = VirtioBlkDevice.maxQueueSize
        var vector: UInt16 = VirtioBlkDevice.noVector
        var enabled = false
        var descriptor: UInt64 = 0
        var driver: UInt64 = 0
        var device: UInt64 = 0
        /// Started on the backend and bound to its ioeventfd.
        var running = false
    }

    struct DeviceState {
        /// The backend connection; replaced when a reset reconnects.
        var frontend: VhostUserFrontend
        /// Which connection `frontend` is (the watcher names the one that hung up).
        var connection = 0
        var reconnects = 0
        /// ISR status (virtio 1.2 section 4.1.4.5): bit 1, configuration change; read to clear.
        var isr: UInt8 = 0
        var log = FailureLog()
        var status: UInt8 = 0
        var deviceFeatureSelect: UInt32 = 0
        var driverFeatureSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var configVector: UInt16 = VirtioBlkDevice.noVector
        var queueSelect: UInt16 = 0
        var configGeneration: UInt8 = 0
        var queues: [Queue]
        var command: UInt16 = 0x0006
        var counters = VirtioCounters()
        var lastBackendError: VhostUserError?
        var resets = 0
        var starts = 0
    }

    /// Connects to the vhost-user backend at `socketPath`, negotiates, reads
    /// the block config, and makes the device (not yet plugged in).
    public init(vm: TinyVM, socketPath: String, queues: Int = 1, delivery: InterruptDelivery = .irqfd) throws(VirtioError) {
        guard (1...Self.maxQueues).contains(queues) else {
            throw .configuration("--queues must be 1...\(Self.maxQueues), not \(queues)")
        }
        guard let layout = MsixLayout(vectorCount: queues + 1, tableBIR: 1, tableOffset: 0, pbaBIR: 1, pbaOffset: Self.pbaOffset)
        else { throw .configuration("no MSI-X layout for \(queues + 1) vectors") }
        self.vm = (vm.vm, vm.memory)
        queueCount = queues
        self.delivery = delivery
        let msixDelivery: MsixDelivery
        do { (msixDelivery, relay) = try delivery.msixDelivery(in: vm) } catch { throw .irqfd(error) }
        emulator = MsixEmulator(layout: layout, delivery: msixDelivery)
        vm.commitErrors.add(owner: emulator) { [weak emulator] in emulator?.reportCommitError($0) }
        do {
            kicks = try (0..<queues).map { _ throws(IrqFdError) in try EventFD() }
            ownCalls = try (0..<queues).map { _ throws(IrqFdError) in try EventFD() }
        } catch { throw .irqfd(error) }

        self.socketPath = socketPath
        let session: Session
        do { session = try Self.connect(socketPath: socketPath, queues: queues) } catch { throw .backend(error) }
        backendFeatures = session.features
        deviceConfig = session.config
        var offered = Feature.version1 | (backendFeatures & Feature.safeBackendFeatures)
        if queues > 1 { offered |= Feature.multiQueue }
        offeredFeatures = offered
        state = Mutex(DeviceState(frontend: session.frontend, queues: Array(repeating: Queue(), count: queues)))
        // Always a poller: it watches the backend socket for a hang-up (an
        // idle device notices a dead backend), and with `.userspace` delivery
        // it also waits on the call fds.
        do { poller = try CallPoller(calls: delivery == .userspace ? ownCalls : []) } catch {
            session.frontend.close()
            throw .irqfd(error)
        }
        poller.start(device: self)
        poller.watch(socket: session.frontend.socketDescriptor, connection: 0)
    }

    deinit {
        poller.stop()
        state.withLock { $0.frontend }.close()
    }

    /// A negotiated backend connection.
    private struct Session {
        var frontend: VhostUserFrontend
        var features: UInt64
        var config: [UInt8]
    }

    /// Connects to the backend at `socketPath` and negotiates: the handshake,
    /// GET_QUEUE_NUM when `queues` > 1, GET_CONFIG. Closes the connection on failure.
    private static func connect(socketPath: String, queues: Int) throws(VhostUserError) -> Session {
        let connection = try VhostUserFrontend(socketPath: socketPath)
        do throws(VhostUserError) {
            let features = try connection.handshake(wantedProtocolFeatures: Self.wantedProtocolFeatures)
            if queues > 1 {
                guard connection.protocolFeatures & 1 != 0 else {
                    throw VhostUserError.unsupported("the backend does not offer VHOST_USER_PROTOCOL_F_MQ; --queues \(queues) needs it")
                }
                let served = try connection.getQueueNum()
                guard served >= UInt64(queues) else {
                    throw VhostUserError.unsupported("the backend serves \(served) queues, not \(queues)")
                }
            }
            guard connection.protocolFeatures & (1 << 9) != 0 else {
                throw VhostUserError.unsupported("the backend does not offer VHOST_USER_PROTOCOL_F_CONFIG (GET_CONFIG)")
            }
            var config = try connection.getConfig(offset: 0, size: 60)
            guard config.count == 60 else { throw VhostUserError.badReply(.getConfig, "\(config.count) bytes of virtio_blk_config, not 60") }
            // num_queues (offset 34): what this device offers, whatever the backend could serve.
            config[34] = UInt8(queues & 0xFF)
            config[35] = UInt8(queues >> 8)
            return Session(frontend: connection, features: features, config: config)
        } catch {
            connection.close()
            throw error
        }
    }

    /// Makes a device and plugs it into `vm`: PCI 00:02.0, BAR1 and BAR4 on the MMIO bus.
    @discardableResult
    public static func attach(to vm: TinyVM, socketPath: String, queues: Int = 1, delivery: InterruptDelivery = .irqfd) throws(VirtioError) -> VirtioBlkDevice {
        let device = try VirtioBlkDevice(vm: vm, socketPath: socketPath, queues: queues, delivery: delivery)
        vm.pci.plug(device, device: slot)
        vm.attach(mmio: msixBase..<msixBase + msixSize, device)
        vm.attach(mmio: virtioBase..<virtioBase + virtioSize, device)
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
    public var reconnectCount: Int { state.withLock { $0.reconnects } }
    /// Whether the device has a live backend connection (false from the
    /// moment a hang-up or failure is noticed until a reset reconnects).
    public var isBackendConnected: Bool { state.withLock { $0.frontend.isConnected } }
    /// Where the device logs backend failures and reconnections (swift-log;
    /// label `irqfd.virtio-blk`): one line per event, at most one a second,
    /// the lines left out counted in the next.
    public var logger: Logger {
        get { state.withLock { $0.log.logger } }
        set { state.withLock { $0.log.logger = newValue } }
    }
    /// Backend events the rate limit kept out of the log so far (since the last line).
    public var suppressedLogLines: Int { state.withLock { $0.log.suppressed } }
    /// The descriptors the device holds for its current backend connection:
    /// the front-end's socket and the watcher's copy of it (a test checks
    /// that these very descriptors are closed once the connection is gone).
    public var connectionDescriptors: [Int32] {
        let socket = state.withLock { $0.frontend.socketDescriptor }
        return [socket, poller.watchedDescriptor].compactMap { $0 }
    }
    /// Whether queue `q` runs on the backend.
    public func isRunning(queue q: Int) -> Bool { state.withLock { $0.queues[q].running } }
    /// Features the driver accepted.
    public var driverFeatures: UInt64 { state.withLock { $0.driverFeatures } }
    /// The eventfds this device owns (each queue's kick, and the call fd it
    /// keeps for NO_VECTOR and `.userspace`), closed in its deinit: a test
    /// checks that these very descriptors are closed after release.
    public var ownedDescriptors: [Int32] { (kicks + ownCalls).map(\.fileDescriptor.rawValue) }

    /// The device's block config (struct virtio_blk_config) as the guest reads it.
    public var blockConfig: [UInt8] { deviceConfig }

    /// Writes device_status from the host, exactly as a guest write would do
    /// (a reset stops the rings before it returns).
    public func writeStatus(_ value: UInt8) { state.withLock { writeStatus(value, &$0) } }

    /// The call fd queue `q` hands the backend for vector `vector`.
    private func callFD(queue q: Int, vector: UInt16) -> Int32? {
        if vector == Self.noVector || delivery == .userspace { return ownCalls[q].fileDescriptor.rawValue }
        guard let event = try? emulator.event(for: Int(vector)) else { return nil }
        return Int32(truncatingIfNeeded: event.nativeHandle.rawValue)
    }

    /// Userspace delivery: queue `q`'s backend signalled its call fd.
    fileprivate func completed(queue q: Int) {
        let vector = state.withLock { $0.queues[q].vector }
        guard vector != Self.noVector else { return }
        emulator.signal(vector: Int(vector))
    }

    // MARK: - The state machine

    /// The backend failed or went away: DEVICE_NEEDS_RESET (virtio 1.2
    /// section 2.1), ISR bit 1 and the configuration-change interrupt on
    /// msix_config (section 4.1.4.5), through the MSI-X emulator like any
    /// other vector (masked, it latches in the PBA), and one rate-limited log line.
    private func backendFailed(_ error: VhostUserError, _ s: inout DeviceState) {
        s.counters.backendFailures += 1
        s.lastBackendError = error
        s.status |= Status.needsReset
        s.configGeneration &+= 1
        s.isr |= 2
        // A closed connection keeps no socket open through the watcher's copy.
        if !s.frontend.isConnected { poller.watch(socket: nil, connection: s.connection) }
        s.log.report(error, socketPath: socketPath, needsReset: true)
        if s.configVector != Self.noVector { emulator.signal(vector: Int(s.configVector)) }
    }

    private func writeStatus(_ value: UInt8, _ s: inout DeviceState) {
        if value == 0 {
            reset(&s)
            return
        }
        let old = s.status & ~Status.needsReset
        // A driver sets bits one step at a time and never clears one
        // (virtio 1.2 section 3.1.1); FAILED may be set at any time.
        guard value & old == old else {
            s.counters.badStatusWrites += 1
            return
        }
        let added = value & ~old
        if added & Status.featuresOK != 0 {
            let required = Status.acknowledge | Status.driver
            guard value & required == required, s.driverFeatures & ~offeredFeatures == 0, s.driverFeatures & Feature.version1 != 0 else {
                // Not accepted: FEATURES_OK stays clear and the driver sees it (section 3.1.1 step 6).
                s.counters.refusedFeatures += 1
                s.status = (s.status & Status.needsReset) | (value & ~(Status.featuresOK | Status.driverOK))
                return
            }
        }
        if added & Status.driverOK != 0 {
            guard value & Status.featuresOK != 0 else {
                s.counters.badStatusWrites += 1
                return
            }
        }
        s.status = (s.status & Status.needsReset) | value
        if added & Status.driverOK != 0, s.status & Status.needsReset == 0 { start(&s) }
    }

    /// DRIVER_OK: SET_FEATURES, SET_MEM_TABLE, then per enabled queue
    /// NUM/ADDR/BASE/KICK/CALL/ENABLE and its ioeventfd.
    private func start(_ s: inout DeviceState) {
        // Rings outside RAM never reach the backend (checked first, all of them).
        for q in s.queues.indices where s.queues[q].enabled {
            let queue = s.queues[q]
            let n = UInt64(queue.size)
            let ok = queue.descriptor % 16 == 0 && queue.driver % 2 == 0 && queue.device % 4 == 0
                && vm.memory.contains(queue.descriptor, length: 16 * n)
                && vm.memory.contains(queue.driver, length: 6 + 2 * n)
                && vm.memory.contains(queue.device, length: 6 + 8 * n)
            if !ok {
                s.counters.badRingAddresses += 1
                s.queues[q].enabled = false
            }
        }
        s.starts += 1
        do throws(VhostUserError) {
            // A backend that died since the last reset, and was not back
            // then, gets another chance here.
            if !s.frontend.isConnected { try reconnect(&s) }
            let frontend = s.frontend
            let protocolBit = backendFeatures & Feature.vhostProtocolFeatures
            try frontend.setFeatures(s.driverFeatures | protocolBit)
            let region = VhostUserMemoryRegion(
                guestPhysicalAddress: 0, size: UInt64(vm.memory.size),
                userAddress: UInt64(UInt(bitPattern: vm.memory.base)), mmapOffset: 0, fd: vm.memory.descriptor)
            try frontend.setMemTable([region])
            for q in s.queues.indices where s.queues[q].enabled {
                let queue = s.queues[q]
                _ = kicks[q].consume()
                try frontend.setVringNum(queue: UInt32(q), size: UInt32(queue.size))
                try frontend.setVringAddr(queue: UInt32(q), descriptor: queue.descriptor, available: queue.driver, used: queue.device)
                try frontend.setVringBase(queue: UInt32(q), index: 0)
                // CALL before KICK: a backend may start processing the moment it has
                // the kick fd, and qemu-storage-daemon 7.2 then signals a call fd it
                // does not have yet ("vu_panic: Error writing eventfd") and drops us.
                guard let call = callFD(queue: q, vector: queue.vector) else {
                    throw VhostUserError.unsupported("no event for vector \(queue.vector)")
                }
                try frontend.setVringCall(queue: UInt32(q), fd: call)
                try frontend.setVringKick(queue: UInt32(q), fd: kicks[q].fileDescriptor.rawValue)
                do {
                    try vm.vm.assignIoeventfd(
                        eventFD: kicks[q].fileDescriptor.rawValue, address: Self.notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
                } catch {
                    throw VhostUserError.systemCall(call: "KVM_IOEVENTFD", errno: error.errno)
                }
                s.queues[q].running = true
                if protocolBit != 0 { try frontend.setVringEnable(queue: UInt32(q), enabled: true) }
            }
        } catch {
            backendFailed(error, &s)
        }
    }

    /// Device reset (virtio 1.2 section 2.4): stop every running ring with
    /// GET_VRING_BASE, remove its ioeventfd, and return every register to its
    /// reset value, all before the status write returns.
    ///
    /// A backend that is gone (its connection closed: it hung up, or broke
    /// the protocol) has no rings to stop; the reset instead reconnects to
    /// ``socketPath`` and negotiates again, so that the driver's
    /// re-initialisation runs against the restarted backend. If nobody
    /// listens yet, the reset still completes (status 0) and DRIVER_OK tries
    /// again, failing with DEVICE_NEEDS_RESET and the config interrupt: a
    /// driver retries by resetting again.
    private func reset(_ s: inout DeviceState) {
        var failure: VhostUserError?
        var stopped = false
        for q in s.queues.indices where s.queues[q].running {
            stopped = true
            try? vm.vm.deassignIoeventfd(
                eventFD: kicks[q].fileDescriptor.rawValue, address: Self.notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
            if failure == nil, s.frontend.isConnected {
                do throws(VhostUserError) { _ = try s.frontend.getVringBase(queue: UInt32(q)) } catch { failure = error }
            }
            _ = kicks[q].consume()
        }
        if stopped { s.resets += 1 }
        var fresh = DeviceState(frontend: s.frontend, queues: Array(repeating: Queue(), count: queueCount))
        fresh.connection = s.connection
        fresh.reconnects = s.reconnects
        fresh.log = s.log
        fresh.counters = s.counters
        fresh.command = s.command
        fresh.resets = s.resets
        fresh.starts = s.starts
        s = fresh
        // A backend that refused (a nonzero REPLY_ACK) but is still connected:
        // DEVICE_NEEDS_RESET, as for any failed call.
        if let failure, s.frontend.isConnected {
            backendFailed(failure, &s)
            return
        }
        guard !s.frontend.isConnected else { return }
        do throws(VhostUserError) { try reconnect(&s) } catch {
            if let failure {
                // It went away under this reset and is not back: needs a reset, as before.
                backendFailed(failure, &s)
            } else {
                // It was already gone (and reported): DRIVER_OK will try again.
                s.lastBackendError = error
                s.log.report(error, socketPath: socketPath, needsReset: false)
            }
            return
        }
        if let failure {
            // It went away under this reset and a new one listened: the reset is clean.
            s.counters.backendFailures += 1
            s.lastBackendError = failure
        }
    }

    /// Replaces the closed connection with a new one to ``socketPath``,
    /// negotiated as at creation. The backend must still offer the features
    /// this device offered the guest; the device config is the one read at
    /// creation.
    private func reconnect(_ s: inout DeviceState) throws(VhostUserError) {
        let session = try Self.connect(socketPath: socketPath, queues: queueCount)
        let needed = offeredFeatures & ~Feature.multiQueue
        guard session.features & needed == needed else {
            session.frontend.close()
            throw .unsupported("the restarted backend offers features 0x\(String(session.features, radix: 16)), without 0x\(String(needed & ~session.features, radix: 16)) that the device offered")
        }
        s.frontend = session.frontend
        s.connection += 1
        s.reconnects += 1
        poller.watch(socket: session.frontend.socketDescriptor, connection: s.connection)
        s.log.reconnected(socketPath: socketPath, connection: s.connection)
    }

    /// Closes the backend connection on purpose, before the VMM stops the
    /// backend at exit: nothing is reported (no NEEDS_RESET, no log line), and
    /// a later reset would reconnect. Idempotent.
    public func disconnect() {
        state.withLock { s in
            poller.watch(socket: nil, connection: s.connection)
            s.frontend.close()
        }
    }

    /// The watcher saw connection `connection`'s socket hang up (POLLHUP or
    /// POLLRDHUP: the backend exited or closed it), whether or not a message
    /// was under way: the device closes it and needs a reset.
    fileprivate func backendHungUp(connection: Int) {
        state.withLock { s in
            guard s.connection == connection, s.frontend.isConnected else { return }
            s.frontend.close()
            backendFailed(.disconnected(nil), &s)
        }
    }

    // MARK: - Common configuration (virtio 1.2 section 4.1.4.3)

    private func readCommon(_ offset: UInt64, _ size: Int, _ s: inout DeviceState) -> UInt64 {
        let q = Int(s.queueSelect)
        let queue: Queue? = s.queues.indices.contains(q) ? s.queues[q] : nil
        func half(_ value: UInt64, _ base: UInt64) -> UInt64? {
            switch (offset - base, size) {
            case (0, 8): value
            case (0, 4): value & 0xFFFF_FFFF
            case (4, 4): value >> 32
            default: nil
            }
        }
        let value: UInt64?
        switch offset {
        case 0x00 where size == 4: value = UInt64(s.deviceFeatureSelect)
        case 0x04 where size == 4: value = s.deviceFeatureSelect < 2 ? (offeredFeatures >> (32 * UInt64(s.deviceFeatureSelect))) & 0xFFFF_FFFF : 0
        case 0x08 where size == 4: value = UInt64(s.driverFeatureSelect)
        case 0x0C where size == 4: value = s.driverFeatureSelect < 2 ? (s.driverFeatures >> (32 * UInt64(s.driverFeatureSelect))) & 0xFFFF_FFFF : 0
        case 0x10 where size == 2: value = UInt64(s.configVector)
        case 0x12 where size == 2: value = UInt64(queueCount)
        case 0x14 where size == 1: value = UInt64(s.status)
        case 0x15 where size == 1: value = UInt64(s.configGeneration)
        case 0x16 where size == 2: value = UInt64(s.queueSelect)
        case 0x18 where size == 2: value = UInt64(queue?.size ?? 0)  // 0: no such queue
        case 0x1A where size == 2: value = UInt64(queue?.vector ?? Self.noVector)
        case 0x1C where size == 2: value = queue?.enabled == true ? 1 : 0
        case 0x1E where size == 2: value = queue == nil ? 0 : UInt64(q)
        case 0x20..<0x28: value = half(queue?.descriptor ?? 0, 0x20)
        case 0x28..<0x30: value = half(queue?.driver ?? 0, 0x28)
        case 0x30..<0x38: value = half(queue?.device ?? 0, 0x30)
        default: value = nil
        }
        guard let value else {
            s.counters.badAccesses += 1
            return 0
        }
        return value
    }

    private func writeCommon(_ offset: UInt64, _ size: Int, _ value: UInt64, _ s: inout DeviceState) {
        let q = Int(s.queueSelect)
        let exists = s.queues.indices.contains(q)
        // Queue fields are writable until DRIVER_OK (section 4.1.4.3.2: the
        // driver configures a queue before enabling it, and enables before DRIVER_OK).
        let queueWritable = exists && s.status & Status.driverOK == 0
        func setHalf(_ field: inout UInt64, _ base: UInt64) -> Bool {
            switch (offset - base, size) {
            case (0, 8): field = value
            case (0, 4): field = field & ~0xFFFF_FFFF | value & 0xFFFF_FFFF
            case (4, 4): field = field & 0xFFFF_FFFF | (value & 0xFFFF_FFFF) << 32
            default: return false
            }
            return true
        }
        switch offset {
        case 0x00 where size == 4: s.deviceFeatureSelect = UInt32(truncatingIfNeeded: value)
        case 0x08 where size == 4: s.driverFeatureSelect = UInt32(truncatingIfNeeded: value)
        case 0x0C where size == 4:
            guard s.status & (Status.featuresOK | Status.driverOK) == 0, s.driverFeatureSelect < 2 else {
                s.counters.readOnlyWrites += 1
                return
            }
            let shift = 32 * UInt64(s.driverFeatureSelect)
            s.driverFeatures = s.driverFeatures & ~(0xFFFF_FFFF << shift) | (value & 0xFFFF_FFFF) << shift
        case 0x10 where size == 2:
            let v = UInt16(truncatingIfNeeded: value)
            if v != Self.noVector, Int(v) >= emulator.layout.vectorCount {
                s.counters.badVectors += 1
                s.configVector = Self.noVector  // reads back NO_VECTOR: not mapped (section 4.1.5.1.2.1)
            } else {
                s.configVector = v
            }
        case 0x14 where size == 1: writeStatus(UInt8(truncatingIfNeeded: value), &s)
        case 0x16 where size == 2: s.queueSelect = UInt16(truncatingIfNeeded: value)
        case 0x18 where size == 2:
            guard queueWritable, !s.queues[q].enabled else { s.counters.readOnlyWrites += 1; return }
            let n = UInt16(truncatingIfNeeded: value)
            guard n != 0, n <= Self.maxQueueSize, n & (n - 1) == 0 else {
                s.counters.badQueueSizes += 1  // ignored: the size keeps its value
                return
            }
            s.queues[q].size = n
        case 0x1A where size == 2:
            guard exists else { s.counters.readOnlyWrites += 1; return }
            let v = UInt16(truncatingIfNeeded: value)
            var chosen = v
            if v != Self.noVector, Int(v) >= emulator.layout.vectorCount {
                s.counters.badVectors += 1
                chosen = Self.noVector
            }
            guard chosen != s.queues[q].vector else { return }
            // The backend learns the new call fd now: one SET_VRING_CALL.
            guard let fd = callFD(queue: q, vector: chosen) else {
                s.queues[q].vector = Self.noVector
                return
            }
            s.queues[q].vector = chosen
            if delivery != .userspace || s.queues[q].running {
                do throws(VhostUserError) { try s.frontend.setVringCall(queue: UInt32(q), fd: fd) } catch { backendFailed(error, &s) }
            }
        case 0x1C where size == 2:
            guard queueWritable else { s.counters.readOnlyWrites += 1; return }
            // Only 1 may be written (section 4.1.4.3.2); disabling is a reset.
            guard value & 0xFFFF == 1 else { s.counters.readOnlyWrites += 1; return }
            s.queues[q].enabled = true
        case 0x20..<0x38:
            guard queueWritable, !s.queues[q].enabled else { s.counters.readOnlyWrites += 1; return }
            let ok: Bool
            switch offset {
            case 0x20..<0x28: ok = setHalf(&s.queues[q].descriptor, 0x20)
            case 0x28..<0x30: ok = setHalf(&s.queues[q].driver, 0x28)
            default: ok = setHalf(&s.queues[q].device, 0x30)
            }
            if !ok { s.counters.badAccesses += 1 }
        case 0x04, 0x12, 0x15, 0x1E: s.counters.readOnlyWrites += 1
        default: s.counters.badAccesses += 1
        }
    }

    // MARK: - Memory space

    private enum Region { case msix(UInt64), common(UInt64), isr, device(UInt64), notify(UInt64) }

    private func decode(_ address: UInt64, _ s: DeviceState) -> Region? {
        guard s.command & 2 != 0 else { return nil }
        if address >= Self.msixBase, address < Self.msixBase + Self.msixSize { return .msix(address - Self.msixBase) }
        guard address >= Self.virtioBase, address < Self.virtioBase + Self.virtioSize else { return nil }
        let offset = address - Self.virtioBase
        switch offset {
        case 0..<0x38: return .common(offset)
        case Self.isrOffset: return .isr
        case Self.deviceOffset..<Self.deviceOffset + 60: return .device(offset - Self.deviceOffset)
        case Self.notifyOffset..<Self.notifyOffset + 4 * UInt64(Self.maxQueues): return .notify(offset - Self.notifyOffset)
        default: return nil
        }
    }

    /// An MMIO read (`MMIODevice`).
    public func read(address: UInt64, size: Int) -> UInt64 {
        let ones: UInt64 = size >= 8 ? .max : (1 << (8 * UInt64(size))) - 1
        let region = state.withLock { s -> Region? in
            let r = decode(address, s)
            if r == nil { s.counters.badAccesses += 1 }
            return r
        }
        switch region {
        case nil: return ones
        case .msix(let offset): return emulator.read(bar: 1, offset: offset, size: size)
        case .common(let offset): return state.withLock { readCommon(offset, size, &$0) }
        case .isr:
            // Read to clear (virtio 1.2 section 4.1.4.5). With MSI-X only bit 1
            // (configuration change) is ever set: queue interrupts never use it.
            return state.withLock { s in
                defer { s.isr = 0 }
                return UInt64(s.isr)
            }
        case .device(let offset):
            guard [1, 2, 4, 8].contains(size), Int(offset) + size <= deviceConfig.count else {
                state.withLock { $0.counters.badAccesses += 1 }
                return 0
            }
            var value: UInt64 = 0
            for i in 0..<size { value |= UInt64(deviceConfig[Int(offset) + i]) << (8 * UInt64(i)) }
            return value
        case .notify: return 0
        }
    }

    /// An MMIO write (`MMIODevice`).
    public func write(address: UInt64, size: Int, value: UInt64) {
        let region = state.withLock { s -> Region? in
            let r = decode(address, s)
            if r == nil { s.counters.badAccesses += 1 }
            return r
        }
        switch region {
        case nil: return
        case .msix(let offset): emulator.write(bar: 1, offset: offset, size: size, value: value)
        case .common(let offset): state.withLock { writeCommon(offset, size, value, &$0) }
        case .isr, .device: state.withLock { $0.counters.readOnlyWrites += 1 }
        case .notify(let offset):
            state.withLock { s in
                s.counters.notifyExits += 1
                let q = Int(offset / 4)
                // A notify carries its queue's index (no NOTIFICATION_DATA).
                guard offset % 4 == 0, q < queueCount, value & 0xFFFF == UInt64(q) else {
                    s.counters.badNotifies += 1
                    return
                }
                // Exited because of its size (an ioeventfd matches 2 bytes): pass it on.
                if s.queues[q].running { kicks[q].signal() }
            }
        }
    }

    // MARK: - Configuration space

    /// The capability list (virtio 1.2 section 4.1.4): struct virtio_pci_cap
    /// at 0x40 common, 0x50 ISR, 0x60 device, 0x70 notify (+ multiplier),
    /// 0x84 PCI config access (+ pci_cfg_data), then MSI-X at 0x98.
    private static func capabilityBytes() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 256)
        func cap(_ at: Int, next: Int, length: Int, type: UInt8, bar: UInt8, offset: UInt32, size: UInt32) {
            bytes[at] = 0x09
            bytes[at + 1] = UInt8(next)
            bytes[at + 2] = UInt8(length)
            bytes[at + 3] = type
            bytes[at + 4] = bar
            for i in 0..<4 {
                bytes[at + 8 + i] = UInt8(truncatingIfNeeded: offset >> (8 * UInt32(i)))
                bytes[at + 12 + i] = UInt8(truncatingIfNeeded: size >> (8 * UInt32(i)))
            }
        }
        cap(0x40, next: 0x50, length: 16, type: 1, bar: 4, offset: 0x0000, size: 0x38)
        cap(0x50, next: 0x60, length: 16, type: 3, bar: 4, offset: 0x1000, size: 1)
        cap(0x60, next: 0x70, length: 16, type: 4, bar: 4, offset: 0x2000, size: 60)
        cap(0x70, next: 0x84, length: 20, type: 2, bar: 4, offset: 0x3000, size: 4 * UInt32(maxQueues))
        bytes[0x70 + 16] = UInt8(notifyMultiplier)
        cap(0x84, next: msixCapabilityOffset, length: 20, type: 5, bar: 0, offset: 0, size: 0)
        return bytes
    }
    private static let capabilities = capabilityBytes()

    private func configDword(_ offset: Int, _ s: DeviceState) -> UInt32 {
        switch offset {
        case 0x00: return 0x1042_1AF4
        case 0x04: return UInt32(s.command) | 0x0010 << 16  // status: capabilities list
        case 0x08: return 0x0100_0001  // class 01 (mass storage), subclass 00 (SCSI), prog-if 00, revision 1
        case 0x14: return UInt32(Self.msixBase)
        case 0x20: return UInt32(Self.virtioBase)
        case 0x2C: return 0x1100_1AF4  // subsystem 0x1100, subsystem vendor 0x1AF4
        case 0x34: return 0x40
        case 0x3C: return 0  // interrupt pin 0: no INTx
        case 0x40..<0x98:
            var v: UInt32 = 0
            for i in 0..<4 { v |= UInt32(Self.capabilities[offset + i]) << (8 * UInt32(i)) }
            return v
        default: return 0
        }
    }

    /// A configuration read (`PCIFunction`).
    public func configRead(offset: Int, size: Int) -> UInt32 {
        guard [1, 2, 4].contains(size), offset >= 0, offset <= 256 - size else {
            state.withLock { $0.counters.badAccesses += 1 }
            return .max
        }
        let cap = Self.msixCapabilityOffset
        if offset >= cap, offset < cap + MsixLayout.capabilityLength {
            return emulator.readCapability(offset: offset - cap, size: size)
        }
        let dword = state.withLock { configDword(offset & ~3, $0) }
        let shifted = dword >> (8 * UInt32(offset & 3))
        return size == 4 ? shifted : shifted & ((1 << (8 * UInt32(size))) - 1)
    }

    /// A configuration write (`PCIFunction`): the command register and the
    /// MSI-X capability are writable; BARs are fixed (sizing reads them back
    /// unchanged); the rest is read-only and counted.
    public func configWrite(offset: Int, size: Int, value: UInt32) {
        guard [1, 2, 4].contains(size), offset >= 0, offset <= 256 - size else {
            state.withLock { $0.counters.badAccesses += 1 }
            return
        }
        let cap = Self.msixCapabilityOffset
        if offset >= cap, offset < cap + MsixLayout.capabilityLength {
            emulator.writeCapability(offset: offset - cap, size: size, value: value)
            return
        }
        // The Command register (0x04..0x05) takes any byte lanes; the rest of
        // the DWORD (Status) and everything else here is read-only.
        let busMaster: Bool? = state.withLock { s in
            guard offset < 0x06, offset + size > 0x04 else {
                s.counters.readOnlyWrites += 1
                return nil
            }
            var command = UInt32(s.command)
            for lane in 0..<size where (0x04..<0x06).contains(offset + lane) {
                let shift = UInt32(8 * (offset + lane - 0x04))
                let byte = (value >> UInt32(8 * lane)) & 0xFF
                command = (command & ~(0xFF << shift)) | (byte << shift)
            }
            s.command = UInt16(truncatingIfNeeded: command) & 0x0406
            return s.command & 0x4 != 0
        }
        // PCI: Bus Master Enable clear stops MSI-X (held as pending by the emulator).
        // Outside the device lock: the emulator takes its own.
        if let busMaster { emulator.setBusMaster(busMaster) }
    }
}

/// The device's VMM thread (poll(2)): it watches the backend socket for a
/// hang-up, so that a backend that dies while the device is idle is noticed
/// at once rather than at the next message; and with `.userspace` delivery it
/// waits on the queues' call fds and injects each completion through the
/// emulator's userspace path (KVM_SIGNAL_MSI), which is what a VMM without
/// irqfd does.
///
/// The socket is watched through a dup(2) the thread owns (the front-end may
/// close its own descriptor at any time, and a number polled after close(2)
/// could be a new file); ``watch(socket:connection:)`` hands over a new one
/// and only the thread closes the old, between two polls.
final class CallPoller: Sendable {
    private let calls: [Int32]
    private let stopEvent: EventFD
    /// Signalled when the watched socket changes.
    private let wake: EventFD
    private let done: EventFD
    private struct Watch {
        /// The dup of the backend socket being watched, and its connection.
        var socket: (fd: Int32, connection: Int)?
        /// Dups no longer watched, closed by the thread before its next poll.
        var retired: [Int32] = []
    }
    private let watched = Mutex(Watch())
    /// The thread's pthread_self(), once it runs (``stop()`` must not wait for itself).
    private let thread = Mutex<pthread_t?>(nil)
    /// POLLRDHUP (Linux, <poll.h> with _GNU_SOURCE, which Glibc's module does not export).
    private static let pollRDHUP: Int16 = 0x2000

    init(calls: [EventFD]) throws(IrqFdError) {
        self.calls = calls.map(\.fileDescriptor.rawValue)
        stopEvent = try EventFD()
        wake = try EventFD()
        done = try EventFD()
    }

    /// Watches `socket` (duplicated; nil: nothing) as connection `connection`;
    /// the previous socket's copy is closed by the thread.
    func watch(socket: Int32?, connection: Int) {
        let copy = socket.map { fcntl($0, F_DUPFD_CLOEXEC, 0) }.flatMap { $0 >= 0 ? $0 : nil }
        watched.withLock { w in
            if let old = w.socket { w.retired.append(old.fd) }
            w.socket = copy.map { ($0, connection) }
        }
        wake.signal()
    }

    /// The socket copy being watched (a test checks that it is closed once the connection is).
    var watchedDescriptor: Int32? { watched.withLock { $0.socket?.fd } }

    /// The thread holds the device weakly: the device's deinit stops it.
    func start(device: VirtioBlkDevice) {
        let thread = Thread { [self, weak device] in
            self.thread.withLock { $0 = pthread_self() }
            while true {
                let socket = watched.withLock { w in
                    for fd in w.retired { Glibc.close(fd) }
                    w.retired = []
                    return w.socket
                }
                var fds = calls.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                fds.append(pollfd(fd: stopEvent.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0))
                fds.append(pollfd(fd: wake.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0))
                // POLLRDHUP: the peer closed its end; POLLHUP and POLLERR are always reported.
                fds.append(pollfd(fd: socket?.fd ?? -1, events: Self.pollRDHUP, revents: 0))
                let n = poll(&fds, nfds_t(fds.count), 1000)
                if n < 0, errno != EINTR { break }
                if fds[calls.count].revents != 0 { break }
                if fds[calls.count + 1].revents != 0 { _ = wake.consume() }
                for q in calls.indices where fds[q].revents != 0 {
                    var count: UInt64 = 0
                    guard Glibc.read(calls[q], &count, 8) == 8 else { continue }
                    // One interrupt per wake-up: signals coalesce, as in the kernel's irqfd.
                    device?.callMonitor.observe(queue: q, signals: count)
                    device?.completed(queue: q)
                }
                if let socket, fds[calls.count + 2].revents & (Self.pollRDHUP | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                    // Stop watching it (no busy loop on a dead socket), then tell the device.
                    watched.withLock { w in
                        if w.socket?.fd == socket.fd {
                            w.retired.append(socket.fd)
                            w.socket = nil
                        }
                    }
                    device?.backendHungUp(connection: socket.connection)
                }
            }
            watched.withLock { w in
                for fd in w.retired { Glibc.close(fd) }
                if let socket = w.socket { Glibc.close(socket.fd) }
                w = Watch()
            }
            done.signal()
        }
        thread.name = "virtio-blk backend"
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Tells the thread to end and waits (up to 5 s) until it has closed
    /// its descriptors. On the thread itself it only tells: the thread holds
    /// the device for the length of one call, so the device's last reference
    /// can go there and its deinit run on this thread, which ends when the
    /// deinit returns; waiting for it would stall the release 5 s.
    func stop() {
        stopEvent.signal()
        let onThread = thread.withLock { t in t.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
        if !onThread { _ = done.wait(timeout: .seconds(5)) }
    }
}
#endif
