#if os(Linux)
import Dispatch
import IrqFdCore
import IrqFdLinux
import IrqFdRelay
import MSIX
import PCI
public import SystemPackage
import Synchronization
import VhostUser

/// Where a device is in a hand-off to a successor VMM.
enum HandOffPhase: Sendable, CustomStringConvertible {
    /// Serving the guest.
    case running
    /// ``VirtioPCIDevice/freeze(timeout:)`` is under way.
    case freezing
    /// Frozen: the device's threads are stopped and the routes of `disarmed` vectors masked.
    case frozen(disarmed: [Int])
    /// Handed to a successor: the device does nothing more.
    case released

    var description: String {
        switch self {
        case .running: "running"
        case .freezing: "freezing"
        case .frozen: "frozen"
        case .released: "released"
        }
    }
}

/// A frozen device's state and the descriptors that go with it.
public struct VirtioDeviceFreeze<DeviceType: VirtioDeviceType & Codable>: Sendable {
    /// The state (``VirtioDeviceHandOffState/encoded()`` for the wire).
    public var state: VirtioDeviceHandOffState<DeviceType>
    /// The descriptors to pass (SCM_RIGHTS), in the order
    /// ``VirtioDeviceHandOffState/descriptorCount`` documents. Borrowed from
    /// the frozen device: open until its ``VirtioPCIDevice/release()`` or
    /// its deinit, and its own again after ``VirtioPCIDevice/thaw()``.
    public var descriptors: [FileDescriptor]
}

/// Live update: the device moves to a successor VMM (another process, or
/// another VM of this one, over the same guest RAM) while the guest and the
/// vhost-user backend go on as if nothing happened. The backend is sent no
/// message at any step and keeps its connection: the successor goes on over
/// the same socket, the same kick eventfds (its doorbells are bound to them)
/// and the same call eventfds (its routes adopt them), so a request the
/// backend completes while no VMM listens latches in its call event and
/// reaches the guest once the successor arms the route.
///
/// The VMM's sequence: pause every vCPU; ``freeze(timeout:)``; send the
/// state and the descriptors; in the successor,
/// ``resume(host:state:descriptors:)`` before its vCPUs start; then
/// ``release()`` here once the successor runs, or ``thaw()`` and resume the
/// vCPUs if any step failed.
extension VirtioPCIDevice where DeviceType: Codable {
    /// Stops the device where it is, for a successor to go on from there.
    /// The vCPUs must be paused (no guest access may change the device
    /// meanwhile). Waits up to `timeout` for the backend operation under way
    /// (a start or reset the guest asked for just before), then stops the
    /// device's threads (the backend watcher, the VMM-served queues), masks
    /// every live vector's route (signals from now on latch in its event)
    /// and returns the state and the descriptors to pass. Sends the backend
    /// nothing and closes nothing.
    ///
    /// Throws, with the device running as before, if an operation is still
    /// under way (``VirtioHandOffError/busy(_:)``) or a route cannot be masked.
    public func freeze(timeout: Duration = .seconds(1)) throws(VirtioHandOffError) -> VirtioDeviceFreeze<DeviceType> {
        try handOff.withLock { (phase: inout HandOffPhase) throws(VirtioHandOffError) in
            guard case .running = phase else { throw .wrongPhase("freeze: the device is \(phase)") }
            phase = .freezing
        }
        func fail(_ error: VirtioHandOffError, restart: Bool) -> VirtioHandOffError {
            if restart { startThreads() }
            handOff.withLock { $0 = .running }
            return error
        }
        // The operation under way sends its messages and records its outcome
        // before the state is read; then the VMM-served queues stop, and what
        // they queued (a request served on the worker) finishes too. The
        // watcher stops last: it enforces the operations' deadlines.
        let deadline = DispatchTime.now() + .nanoseconds(Int(Self.nanoseconds(timeout)))
        guard pending.wait(timeout: deadline) == .success else {
            throw fail(.busy("a backend operation is still under way after \(timeout)"), restart: false)
        }
        vmmQueues?.stop()
        guard pending.wait(timeout: deadline) == .success else {
            throw fail(.busy("a served request is still under way after \(timeout)"), restart: true)
        }
        watcher.stop()
        if state.withLock({ $0.operations > 0 || $0.resetting }) {
            throw fail(.busy("a backend operation was queued meanwhile"), restart: true)
        }
        var disarmed: [Int] = []
        if routes != nil {
            for v in 0..<emulator.layout.vectorCount where emulator.isLive(v) {
                guard let route = emulator.route(v) else { continue }
                do throws(IrqFdError) {
                    try route.mask()
                    disarmed.append(v)
                } catch {
                    for v in disarmed { try? emulator.route(v)?.unmask() }
                    throw fail(.irqfd(error), restart: true)
                }
            }
        }
        let msix = emulator.save()
        let events = emulator.handOffEvents.sorted { $0.key < $1.key }
        let routedVectors = events.map(\.key)
        // A connection-scoped route's event forwards to its current route's: that eventfd is what crosses.
        let vectorDescriptors = events.map(\.value.nativeHandle.fileDescriptor)
        let (transport, session, socket) = state.withLock { s in
            (transportState(s), sessionState(s), s.session.frontend.socket)
        }
        let frozen = VirtioDeviceHandOffState(
            deviceType: deviceType, delivery: delivery, backendFeatures: backendFeatures,
            offeredFeatures: offeredFeatures,
            deviceConfiguration: deviceConfiguration, pci: state.withLock { Self.pciState($0.pci) },
            transport: transport, msix: msix, routedVectors: routedVectors, session: session)
        let descriptors =
            (session.connected ? [socket].compactMap { $0 } : []) + kicks.map(\.fileDescriptor)
            + calls.descriptors + vectorDescriptors
        handOff.withLock { $0 = .frozen(disarmed: disarmed) }
        return VirtioDeviceFreeze(state: frozen, descriptors: descriptors)
    }

    /// The hand-off failed: the device goes on exactly as before the
    /// freeze. The masked routes are armed again (what latched meanwhile is
    /// injected, once) and the threads restart; a backend that hung up
    /// meanwhile is noticed at once. Sends nothing.
    public func thaw() throws(VirtioHandOffError) {
        let disarmed = try handOff.withLock { (phase: inout HandOffPhase) throws(VirtioHandOffError) -> [Int] in
            guard case .frozen(let disarmed) = phase else { throw .wrongPhase("thaw: the device is \(phase)") }
            phase = .running
            return disarmed
        }
        var failure: IrqFdError?
        for v in disarmed {
            do throws(IrqFdError) { try emulator.route(v)?.unmask() } catch { failure = failure ?? error }
        }
        startThreads()
        if let failure { throw .irqfd(failure) }
    }

    /// The hand-off succeeded: the successor serves the device from now on.
    /// This device gives up the connection without a message (close(2) of
    /// its copy of the socket, no shutdown(2): the successor's copy is the
    /// same connection) and does nothing more; its deinit closes its copies
    /// of the eventfds (the backend and the successor hold their own).
    public func release() throws(VirtioHandOffError) {
        try handOff.withLock { (phase: inout HandOffPhase) throws(VirtioHandOffError) in
            guard case .frozen = phase else { throw .wrongPhase("release: the device is \(phase)") }
            phase = .released
        }
        let frontend = state.withLock { s in
            // Nothing of this device's runs again: no operation, no reset, no retirement.
            s.disconnectedOnPurpose = true
            s.epoch &+= 1
            s.started = []
            s.doorbells = []
            s.callsHandedOut = false
            return s.session.frontend
        }
        frontend.close()
    }

    /// Goes on with a device a predecessor froze (``freeze(timeout:)``), in
    /// `host`'s VM over the same guest RAM, before its vCPUs start: the
    /// session continues on the same socket (nothing is sent; ring addresses
    /// are translated with the memory table the backend mapped until the
    /// next SET_MEM_TABLE), the MSI-X function is restored onto routes that
    /// adopt the same call events (one batch; what latched while no VMM
    /// listened is injected when each live vector's route is armed, once),
    /// the doorbells bound before are bound again to the same kick eventfds,
    /// and the device's threads start. `descriptors` are the successor's own
    /// (received by SCM_RIGHTS, or duplicated) in the order
    /// ``VirtioDeviceHandOffState/descriptorCount`` gives; they are the
    /// device's from now on, and closed if it throws. Not plugged in: see
    /// ``resume(attachingTo:state:descriptors:)``.
    public static func resume(
        host: any VirtioHost, state saved: VirtioDeviceHandOffState<DeviceType>, descriptors: [FileDescriptor]
    ) throws(VirtioHandOffError) -> VirtioPCIDevice {
        guard descriptors.count == saved.descriptorCount else {
            for fd in descriptors { try? fd.close() }
            throw .malformed("\(descriptors.count) descriptors for a state that passes \(saved.descriptorCount)")
        }
        // Each descriptor gets its owner at once: every path from here closes what it does not keep.
        var rest = descriptors[...]
        let socket = saved.session.connected ? rest.popFirst() : nil
        let frontend = VhostUserFrontend(
            resuming: socket, socketPath: saved.session.socketPath,
            timeout: .nanoseconds(saved.session.exchangeTimeoutNanoseconds), state: saved.session.negotiated)
        let queueCount = saved.transport.queues.count
        let kicks = rest.prefix(queueCount).map { EventFD(adopting: $0) }
        rest = rest.dropFirst(queueCount)
        let calls = ConnectionScopedCalls(adopting: rest.prefix(queueCount).map { EventFD(adopting: $0) })
        rest = rest.dropFirst(queueCount)
        let vectorEvents = rest.map { EventFD(adopting: $0) }

        let deviceType = saved.deviceType
        guard let delivery = InterruptDelivery(rawValue: saved.delivery) else {
            throw .malformed("delivery \(saved.delivery)")
        }
        guard queueCount == deviceType.queueCount, (1...notifySlots).contains(queueCount),
            saved.routedVectors.allSatisfy({ (0...queueCount).contains($0) }),
            Set(saved.routedVectors).count == saved.routedVectors.count,
            let layout = MsixLayout(
                vectorCount: queueCount + 1, tableBIR: 1, tableOffset: 0, pbaBIR: 1, pbaOffset: pbaOffset)
        else { throw .malformed("\(queueCount) queues, routed vectors \(saved.routedVectors)") }
        let emulator: MsixEmulator
        let relay: RelayIrqFd?
        let routes: ConnectionScopedPartition?
        do { (emulator, relay, routes) = try makeEmulator(delivery, layout: layout, host: host) } catch {
            throw .irqfd(error)
        }
        var pci = configurationSpace(deviceType, configurationSize: saved.deviceConfiguration.count)
        pci.restore(command: saved.pci.command, barValues: saved.pci.barValues, interruptLine: saved.pci.interruptLine)
        // Bus Master Enable is the function's: set before the MSI-X state, which it gates.
        emulator.setBusMaster(pci.isBusMasterEnabled)
        let events = Dictionary(uniqueKeysWithValues: zip(saved.routedVectors, vectorEvents.map { $0 as any Event }))
        do throws(MsixError) {
            try emulator.restore(saved.msix, adopting: events)
        } catch {
            throw .msix(error)
        }

        let doorbells = host.doorbells
        var bound: [Int] = []
        for (q, queue) in saved.transport.queues.enumerated() where queue.doorbellBound {
            do throws(SystemCallError) {
                try doorbells.bind(
                    kicks[q].fileDescriptor, address: notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
                bound.append(q)
            } catch {
                for q in bound {
                    try? doorbells.unbind(
                        kicks[q].fileDescriptor, address: notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
                }
                throw .doorbell(error)
            }
        }
        let watcher: CallPoller
        let vmmQueues: VMMQueuePoller?
        do throws(IrqFdError) {
            watcher = try CallPoller(calls: delivery == .userspace ? calls : nil)
            let served = (0..<queueCount).filter { deviceType.isServedByVMM(queue: $0) }
            vmmQueues = served.isEmpty ? nil : try VMMQueuePoller(queues: served, kicks: kicks)
        } catch {
            for q in bound {
                try? doorbells.unbind(
                    kicks[q].fileDescriptor, address: notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
            }
            throw .irqfd(error)
        }
        let session = VhostUserSession(
            socketPath: saved.session.socketPath, frontend: frontend, connection: saved.session.connection,
            reconnects: saved.session.reconnects)
        let device = VirtioPCIDevice(
            resumed: ResumedParts(
                deviceType: deviceType, memory: host.guestMemory, doorbells: doorbells, delivery: delivery,
                emulator: emulator, relay: relay, routes: routes, kicks: kicks, calls: calls,
                socketPath: saved.session.socketPath, backendFeatures: saved.backendFeatures,
                deviceConfiguration: saved.deviceConfiguration, offeredFeatures: saved.offeredFeatures,
                state: deviceState(saved, session: session, pci: pci, bound: Set(bound)), watcher: watcher,
                vmmQueues: vmmQueues))
        device.startThreads()
        return device
    }

    /// ``resume(attachingTo:state:descriptors:)`` from the state's encoding
    /// (``VirtioDeviceHandOffState/encoded()``), as a successor receives it.
    /// A state this build does not read (another version, another device
    /// type, not a state) throws, and `descriptors` are closed all the same.
    @discardableResult
    public static func resume(
        attachingTo host: any VirtioHost, encoded bytes: [UInt8], descriptors: [FileDescriptor]
    ) throws(VirtioHandOffError) -> VirtioPCIDevice {
        let saved: VirtioDeviceHandOffState<DeviceType>
        do { saved = try VirtioDeviceHandOffState(decoding: bytes) } catch {
            for fd in descriptors { try? fd.close() }
            throw error
        }
        return try resume(attachingTo: host, state: saved, descriptors: descriptors)
    }

    /// ``resume(host:state:descriptors:)``, then plugs the device into
    /// `host` at 00:02.0 (BAR1 and BAR4 routed to it), as
    /// ``attach(to:deviceType:socketPath:delivery:connectTimeout:)`` does.
    @discardableResult
    public static func resume(
        attachingTo host: any VirtioHost, state saved: VirtioDeviceHandOffState<DeviceType>,
        descriptors: [FileDescriptor]
    ) throws(VirtioHandOffError) -> VirtioPCIDevice {
        let device = try resume(host: host, state: saved, descriptors: descriptors)
        host.plug(device, device: slot)
        return device
    }
}

extension VirtioPCIDevice {
    /// What ``init(resumed:)`` is made of.
    struct ResumedParts {
        var deviceType: DeviceType
        var memory: any GuestMemoryMap
        var doorbells: any Doorbells
        var delivery: InterruptDelivery
        var emulator: MsixEmulator
        var relay: RelayIrqFd?
        var routes: ConnectionScopedPartition?
        var kicks: [EventFD]
        var calls: ConnectionScopedCalls
        var socketPath: String
        var backendFeatures: UInt64
        var deviceConfiguration: [UInt8]
        var offeredFeatures: UInt64
        var state: DeviceState
        var watcher: CallPoller
        var vmmQueues: VMMQueuePoller?
    }

    /// Starts (or, after a freeze, restarts) the device's threads: the
    /// watcher on the current connection's socket, the VMM-served queues,
    /// each of which then serves what was published while it did not run.
    func startThreads() {
        // Reporting first: a call latched while no VMM listened is consumed by the
        // thread's first wait, and with no device to report to it would be lost.
        watcher.report(to: self)
        watcher.start(name: deviceType.name)
        state.withLock { s in
            let frontend = s.session.frontend
            watcher.watch(socket: frontend.isConnected ? frontend.socket : nil, connection: s.session.connection)
        }
        vmmQueues?.start(device: self, name: deviceType.name)
        let served = state.withLock { s in
            s.queues.indices.filter { s.queues[$0].running && deviceType.isServedByVMM(queue: $0) }
        }
        for q in served { serveVMMQueue(q) }
    }

    /// `duration` in nanoseconds (saturating).
    static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : product &+ attoseconds / 1_000_000_000
    }

    static func pciState(_ pci: PCIConfigurationSpace) -> PCIHandOffState {
        PCIHandOffState(command: pci.command, barValues: pci.barValues, interruptLine: pci.interruptLine)
    }

    func transportState(_ s: DeviceState) -> VirtioTransportHandOffState {
        let queues = s.queues.indices.map { q in
            let queue = s.queues[q]
            let started = s.started.contains(q)
            let call: VirtioTransportHandOffState.CallSource? =
                started ? (queue.vector == Self.noVector || delivery == .userspace ? .own : .vector(queue.vector)) : nil
            return VirtioTransportHandOffState.Queue(
                size: queue.size, vector: queue.vector, enabled: queue.enabled, descriptor: queue.descriptor,
                driver: queue.driver, device: queue.device, notifiable: queue.notifiable, running: queue.running,
                nextAvailable: queue.nextAvailable, startedOnBackend: started,
                startedRings: s.startedRings[q].map { [$0.driver, $0.device] }, doorbellBound: s.doorbells.contains(q),
                backendCall: call)
        }
        return VirtioTransportHandOffState(
            status: s.status, isr: s.isr, deviceFeatureSelect: s.deviceFeatureSelect,
            driverFeatureSelect: s.driverFeatureSelect, driverFeatures: s.driverFeatures, configVector: s.configVector,
            queueSelect: s.queueSelect, configGeneration: s.configGeneration, queues: queues, epoch: s.epoch,
            callsHandedOut: s.callsHandedOut, disconnectedOnPurpose: s.disconnectedOnPurpose,
            operationTimeoutNanoseconds: Self.nanoseconds(s.operationTimeout), resets: s.resets, starts: s.starts)
    }

    func sessionState(_ s: DeviceState) -> VhostUserSessionHandOffState {
        let frontend = s.session.frontend
        return VhostUserSessionHandOffState(
            socketPath: s.session.socketPath, connected: frontend.isConnected && frontend.socket != nil,
            connection: s.session.connection, reconnects: s.session.reconnects,
            exchangeTimeoutNanoseconds: Self.nanoseconds(frontend.timeout), negotiated: frontend.handOffState)
    }

    /// The device state a successor goes on with.
    static func deviceState(
        _ saved: VirtioDeviceHandOffState<some VirtioDeviceType & Codable>, session: VhostUserSession,
        pci: PCIConfigurationSpace, bound: Set<Int>
    ) -> DeviceState {
        let t = saved.transport
        var s = DeviceState(
            session: session, log: FailureLog(device: saved.deviceType.name),
            queues: t.queues.map { saved in
                var queue = Queue()
                queue.size = saved.size
                queue.vector = saved.vector
                queue.enabled = saved.enabled
                queue.descriptor = saved.descriptor
                queue.driver = saved.driver
                queue.device = saved.device
                queue.notifiable = saved.notifiable
                queue.running = saved.running
                queue.nextAvailable = saved.nextAvailable
                return queue
            }, pci: pci)
        s.status = t.status
        s.isr = t.isr
        s.deviceFeatureSelect = t.deviceFeatureSelect
        s.driverFeatureSelect = t.driverFeatureSelect
        s.driverFeatures = t.driverFeatures
        s.configVector = t.configVector
        s.queueSelect = t.queueSelect
        s.configGeneration = t.configGeneration
        s.epoch = t.epoch
        s.callsHandedOut = t.callsHandedOut
        s.disconnectedOnPurpose = t.disconnectedOnPurpose
        s.operationTimeout = .nanoseconds(t.operationTimeoutNanoseconds)
        s.resets = t.resets
        s.starts = t.starts
        s.started = Set(t.queues.indices.filter { t.queues[$0].startedOnBackend })
        for (q, queue) in t.queues.enumerated() {
            if let rings = queue.startedRings, rings.count == 2 { s.startedRings[q] = (rings[0], rings[1]) }
        }
        s.doorbells = bound
        return s
    }
}
#endif
