#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import SystemPackage
import VhostUser

/// What the device's worker does with the backend, off the vCPUs' path.
enum BackendOperation: Sendable {
    /// DRIVER_OK: start the enabled queues (reconnecting first if the connection is gone).
    case start
    /// A reset: stop the started rings, then status reads 0; then reconnect if the connection is gone.
    case reset
    /// After a reset with nothing to stop: reconnect if the connection is gone.
    case reconnect
    /// A queue's vector changed while it runs: SET_VRING_CALL with the new call fd.
    case setCall(queue: Int)
    /// A queue the VMM serves itself was notified: serve its requests (which may message the backend).
    case serve(queue: Int)
}

/// The device's worker: one operation at a time, in the order the guest
/// asked for them, each under one deadline. An operation reads what it needs
/// under the device lock, sends its messages without it, and records the
/// outcome under it again, where an outcome from before a later reset
/// (another epoch) changes nothing the guest sees.
extension VirtioPCIDevice {
    /// Queues `operation` on the worker, tagged with the current epoch.
    func enqueue(_ operation: BackendOperation, _ s: inout DeviceState) {
        s.operations += 1
        let epoch = s.epoch
        worker.async(group: pending) { [self] in
            perform(operation, epoch: epoch)
            state.withLock { $0.operations -= 1 }
        }
    }

    private func perform(_ operation: BackendOperation, epoch: Int) {
        switch operation {
        case .start: performStart(epoch: epoch)
        case .reset: performReset(epoch: epoch)
        case .reconnect: reconnectIfClosed(epoch: epoch, failureNeedsReset: false)
        case .setCall(let q): performSetCall(q, epoch: epoch)
        case .serve(let q): performServe(q, epoch: epoch)
        }
    }

    /// Runs `body` (the messages of one operation on `frontend`) under one
    /// deadline: when ``operationTimeout`` passes, the watcher shuts the
    /// socket down and the message under way fails at once, reported as a timeout.
    private func withDeadline(
        _ frontend: VhostUserFrontend, _ body: () throws(VhostUserError) -> Void
    ) throws(VhostUserError) {
        let deadline = ContinuousClock.now + state.withLock { $0.operationTimeout }
        watcher.arm(deadline: deadline, socket: frontend.socket)
        defer { watcher.disarm() }
        do throws(VhostUserError) {
            try body()
        } catch {
            throw Self.timedOut(error, deadline: deadline)
        }
    }

    /// A message that failed because the deadline shut the socket down failed on the deadline.
    static func timedOut(_ error: VhostUserError, deadline: ContinuousClock.Instant) -> VhostUserError {
        guard ContinuousClock.now >= deadline else { return error }
        switch error {
        case .disconnected(let request?): return .timeout(request)
        case .systemCall(let call, _): return .unsupported("\(call) failed after the operation's deadline")
        default: return error
        }
    }

    /// Replaces a closed connection with a new one to ``socketPath``,
    /// negotiated as at creation, under one deadline of its own; the watcher
    /// watches the new socket. Returns whether there is a connection.
    /// `failureNeedsReset`: a failure is the device's (DRIVER_OK's) and sets
    /// DEVICE_NEEDS_RESET; otherwise it is logged and DRIVER_OK tries again
    /// (`keepCause`: ``lastBackendError`` keeps the failure that closed the connection).
    @discardableResult
    private func reconnectIfClosed(epoch: Int, failureNeedsReset: Bool, keepCause: Bool = false) -> Bool {
        let (session, timeout) = state.withLock { ($0.session, $0.operationTimeout) }
        if session.frontend.isConnected { return true }
        let deadline = ContinuousClock.now + timeout
        let required = deviceType.requiredOfRestartedBackend(offered: offeredFeatures)
        do throws(VhostUserError) {
            defer { watcher.disarm() }
            let frontend = try session.dial(deviceType: deviceType, required: required, timeout: timeout) {
                watcher.arm(deadline: deadline, socket: $0.socket)
            }
            state.withLock { s in
                s.session.adopt(frontend)
                s.disconnectedOnPurpose = false
                s.started = []
                watcher.watch(socket: frontend.socket, connection: s.session.connection)
                s.log.reconnected(socketPath: socketPath, connection: s.session.connection)
            }
            return true
        } catch {
            let error = Self.timedOut(error, deadline: deadline)
            state.withLock { s in
                if failureNeedsReset, s.epoch == epoch {
                    backendFailed(error, closed: true, &s)
                } else {
                    if !keepCause { s.lastBackendError = error }
                    s.log.report(error, socketPath: socketPath, needsReset: false)
                }
            }
            return false
        }
    }

    private struct StartPlan {
        var session: VhostUserSession
        var driverFeatures: UInt64
        var queues: [(index: Int, queue: Queue, call: FileDescriptor?)]
    }

    /// DRIVER_OK on the backend: SET_FEATURES, SET_MEM_TABLE, then per
    /// enabled queue NUM/ADDR/BASE/CALL/KICK and ENABLE, under one deadline.
    /// A failure sets DEVICE_NEEDS_RESET and raises the config interrupt.
    private func performStart(epoch: Int) {
        func current(_ s: DeviceState) -> Bool {
            s.epoch == epoch && !s.resetting && s.status & Status.driverOK != 0 && s.status & Status.needsReset == 0
        }
        guard state.withLock({ current($0) }) else { return }
        // A backend that died since the last reset, and was not back then, gets another chance here.
        guard reconnectIfClosed(epoch: epoch, failureNeedsReset: true) else { return }
        guard
            let plan = state.withLock({ s -> StartPlan? in
                guard current(s) else { return nil }
                // The queues the VMM serves itself (a virtio-net control queue) are not the backend's.
                let queues = s.queues.indices.filter { s.queues[$0].notifiable && !deviceType.isServedByVMM(queue: $0) }
                    .map {
                        q -> (index: Int, queue: Queue, call: FileDescriptor?) in
                        (index: q, queue: s.queues[q], call: callFD(queue: q, vector: s.queues[q].vector))
                    }
                s.callsHandedOut = true
                return StartPlan(session: s.session, driverFeatures: s.driverFeatures, queues: queues)
            })
        else { return }
        let session = plan.session
        do throws(VhostUserError) {
            try withDeadline(session.frontend) { () throws(VhostUserError) in
                let protocolBit = backendFeatures & VirtioFeature.vhostProtocolFeatures
                // The backend hears only of features it offered and implements (vhost-user
                // SET_FEATURES: a subset of GET_FEATURES; DPDK refuses anything else).
                let backendShare = plan.driverFeatures & backendFeatures & ~deviceType.featuresServedByVMM
                try session.setUp(driverFeatures: backendShare, protocolBit: protocolBit, memory: memory)
                for (q, queue, call) in plan.queues {
                    try session.describeRing(
                        q, size: queue.size, descriptor: queue.descriptor, driver: queue.driver, device: queue.device)
                    guard let call else { throw VhostUserError.unsupported("no event for vector \(queue.vector)") }
                    try session.connectRing(q, call: call, kick: kicks[q].fileDescriptor)
                    state.withLock { s in
                        s.started.insert(q)
                        s.startedRings[q] = (queue.driver, queue.device)
                        if s.epoch == epoch { s.queues[q].running = true }
                    }
                    if protocolBit != 0, deviceType.isEnabledAtStart(queue: q, driverFeatures: plan.driverFeatures) {
                        try session.enableRing(q)
                    }
                }
            }
            startVMMServedQueues(epoch: epoch)
        } catch {
            let closed = !session.frontend.isConnected
            state.withLock { s in
                guard s.epoch == epoch else {
                    // A reset came meanwhile: it stops what started, and says nothing to the guest.
                    guard !s.disconnectedOnPurpose else { return }
                    s.counters.backendFailures += 1
                    s.lastBackendError = error
                    if closed { s.started = [] }
                    return
                }
                // The watcher saw the hang-up first and reported it: one failure, not two.
                guard !(closed && s.status & Status.needsReset != 0) else { return }
                backendFailed(error, closed: closed, &s)
            }
            if closed { retireEventsIfHandedOut() }
        }
    }

    /// Unbinds every doorbell DRIVER_OK bound; a notify exits to the VMM
    /// again. Here, not on the vCPU: KVM_IOEVENTFD's removal waits for the
    /// kernel's SRCU grace period, and a reset may remove several.
    /// The kick eventfds are not drained here: the backend may be about to
    /// read one (qemu-storage-daemon panics on a kick it finds empty), so
    /// they are drained once the rings are stopped.
    private func unbindDoorbells() {
        let bound = state.withLock { s in
            defer { s.doorbells = [] }
            return s.doorbells
        }
        for q in bound {
            try? doorbells.unbind(
                kicks[q].fileDescriptor, address: Self.notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
        }
    }

    /// The reset's backend half: the doorbells unbound, GET_VRING_BASE for every started ring under
    /// one deadline (a ring the backend does not stop, or answers for
    /// another ring, costs it its connection: a backend that did not stop
    /// its ring may still write guest memory), then device_status reads 0;
    /// then, if the connection is gone, a reconnection under its own deadline.
    private func performReset(epoch: Int) {
        unbindDoorbells()
        let (session, started, rings) = state.withLock { ($0.session, $0.started.sorted(), $0.startedRings) }
        var failure: VhostUserError?
        if !started.isEmpty, session.frontend.isConnected {
            awaitInFlight(rings.filter { started.contains($0.key) }.map(\.value))
            do throws(VhostUserError) {
                try withDeadline(session.frontend) { () throws(VhostUserError) in
                    for q in started { try session.stopRing(q) }
                }
            } catch {
                failure = error
                session.frontend.close()
            }
        }
        // The rings are stopped (or their connection is gone): a kick left is stale.
        for kick in kicks { _ = kick.consume() }
        // No signal of theirs reaches the guest.
        retireEventsIfHandedOut()
        state.withLock { s in
            if !started.isEmpty { s.resets += 1 }
            s.started = []
            if let failure, !s.disconnectedOnPurpose {
                s.counters.backendFailures += 1
                s.lastBackendError = failure
                s.log.report(failure, socketPath: socketPath, needsReset: false)
                watcher.watch(socket: nil, connection: s.session.connection)
            }
            // A later reset (another epoch) finishes the job and sets 0 itself.
            guard s.epoch == epoch else { return }
            s.resetting = false
            s.status = 0
        }
        reconnectIfClosed(epoch: epoch, failureNeedsReset: false, keepCause: failure != nil)
    }

    /// Gives the requests the backend has taken a moment to complete before
    /// GET_VRING_BASE: until each ring's used index reaches its available
    /// index, for at most ``inFlightGrace``. qemu-storage-daemon 7.2 closes
    /// the call fd at GET_VRING_BASE but still completes the requests it had
    /// in flight, and then panics writing the closed call fd ("Error writing
    /// eventfd") and drops the connection. Reads guest RAM only (the indices,
    /// virtio 1.2 sections 2.7.6 and 2.7.8); a guest or backend that never
    /// catches up costs the grace period, no more.
    private func awaitInFlight(_ rings: [(driver: UInt64, device: UInt64)]) {
        let until = ContinuousClock.now + Self.inFlightGrace
        func index(_ address: UInt64) -> UInt16? {
            guard let region = memory.regions.first(where: { $0.contains(address, length: 2) }) else { return nil }
            let host = UInt(region.hostAddress) + UInt(address - region.guestPhysicalAddress)
            return UnsafeRawPointer(bitPattern: host)?.loadUnaligned(as: UInt16.self)
        }
        while ContinuousClock.now < until {
            let busy = rings.contains { ring in
                guard let available = index(ring.driver + 2), let used = index(ring.device + 2) else { return false }
                return available != used
            }
            guard busy else { return }
            usleep(500)
        }
    }

    /// The longest a reset waits for requests in flight (``awaitInFlight(_:)``).
    static var inFlightGrace: Duration { .milliseconds(200) }

    /// queue_msix_vector changed while the queue runs: SET_VRING_CALL with the new call fd.
    private func performSetCall(_ q: Int, epoch: Int) {
        guard
            let (session, call) = state.withLock({ s -> (VhostUserSession, FileDescriptor?)? in
                guard s.epoch == epoch, s.started.contains(q), s.status & Status.needsReset == 0 else { return nil }
                s.callsHandedOut = true
                return (s.session, callFD(queue: q, vector: s.queues[q].vector))
            }), let call
        else { return }
        do throws(VhostUserError) {
            try withDeadline(session.frontend) { () throws(VhostUserError) in try session.setCall(q, call) }
        } catch {
            let closed = !session.frontend.isConnected
            state.withLock { s in
                guard s.epoch == epoch else { return }
                backendFailed(error, closed: closed, &s)
            }
            if closed { retireEventsIfHandedOut() }
        }
    }

    /// Serves queue `q`'s requests (a queue the VMM serves) without the
    /// device lock: the pass works on a copy of the device state taken under
    /// it, and what the pass changed (the queue's next available index, the
    /// refused chains) is recorded under it again. The backend messages a
    /// request sends run under one deadline; a failure sets DEVICE_NEEDS_RESET
    /// (unless a reset came meanwhile).
    func performServe(_ q: Int, epoch: Int) {
        guard
            var pass = state.withLock({ s -> DeviceState? in
                guard s.epoch == epoch, s.queues.indices.contains(q), s.queues[q].running,
                    s.status & Status.needsReset == 0
                else { return nil }
                return s
            })
        else { return }
        let refusedBefore = pass.counters.badServedRequests
        let frontend = pass.session.frontend
        var failure: VhostUserError?
        do throws(VhostUserError) {
            try withDeadline(frontend) { () throws(VhostUserError) in
                if let error = serve(q, &pass) { throw error }
            }
        } catch {
            failure = error
        }
        let closed = failure != nil && !frontend.isConnected
        state.withLock { s in
            guard s.epoch == epoch else { return }
            s.queues[q].nextAvailable = pass.queues[q].nextAvailable
            s.counters.badServedRequests += pass.counters.badServedRequests - refusedBefore
            guard let failure, s.status & Status.needsReset == 0 else { return }
            backendFailed(failure, closed: closed, &s)
        }
        if closed { retireEventsIfHandedOut() }
    }
}
#endif
