#if os(Linux)
import IrqFdCore
import IrqFdLinux
import Logging
import MSIX
import SystemPackage
import VhostUser

/// The device_status state machine (virtio 1.2 sections 2.1, 2.4 and 3.1.1)
/// as the guest drives it: feature negotiation, DRIVER_OK, reset, and a
/// backend that fails or goes away. Everything here runs under the device
/// lock and sends no backend message: what needs the backend is queued on
/// the worker (``BackendOperation``).
extension VirtioPCIDevice {
    /// The call fd queue `q` hands the backend for vector `vector` (borrowed:
    /// the emulator's route event, or the device's own eventfd).
    func callFD(queue q: Int, vector: UInt16) -> FileDescriptor? {
        if vector == Self.noVector || delivery == .userspace { return calls.event(queue: q).fileDescriptor }
        guard let event = try? emulator.event(for: Int(vector)) else { return nil }
        return event.nativeHandle.fileDescriptor
    }

    /// Userspace delivery: queue `q`'s backend signalled its call fd.
    func completed(queue q: Int) {
        let vector = state.withLock { $0.queues[q].vector }
        guard vector != Self.noVector else { return }
        emulator.signal(vector: Int(vector))
    }

    /// The backend failed or went away: DEVICE_NEEDS_RESET (virtio 1.2
    /// section 2.1), ISR bit 1 and the configuration-change interrupt on
    /// msix_config (section 4.1.4.5), through the MSI-X emulator like any
    /// other vector (masked, it latches in the PBA), and one rate-limited log
    /// line. During a reset only the log line and the count: the reset
    /// itself completes (status 0) and the next connection is a new one.
    /// `closed`: the connection is gone (the watcher stops watching it).
    func backendFailed(_ error: VhostUserError, closed: Bool, _ s: inout DeviceState) {
        s.counters.backendFailures += 1
        s.lastBackendError = error
        if closed {
            s.started = []
            watcher.watch(socket: nil, connection: s.session.connection)
        }
        guard !s.resetting else {
            s.log.report(error, socketPath: socketPath, needsReset: false)
            return
        }
        s.status |= Status.needsReset
        s.configGeneration &+= 1
        s.isr |= 2
        s.log.report(error, socketPath: socketPath, needsReset: true)
        if s.configVector != Self.noVector { emulator.signal(vector: Int(s.configVector)) }
    }

    /// The backend connection that was sent the call fds stops serving the
    /// queues (a reset stopped them, or the connection is gone): their events
    /// are retired (the route events, ``ConnectionScopedPartition``, and the
    /// device's own call eventfds, ``ConnectionScopedCalls``, which
    /// `.userspace` delivery waits on), so whatever it signals
    /// from now on reaches no guest. Outside the device lock: retiring makes
    /// routes, so a vCPU's access does not wait for it.
    func retireEventsIfHandedOut() {
        let handedOut = state.withLock { s in
            defer { s.callsHandedOut = false }
            return s.callsHandedOut
        }
        guard handedOut else { return }
        var failure = routes?.retireEvents()
        do throws(IrqFdError) {
            let held = try calls.retire()
            // Signalled while the connection still served the queue: delivered, as an irqfd would have at once.
            for (q, count) in held.enumerated() where count != 0 && delivery == .userspace { completed(queue: q) }
        } catch {
            failure = failure ?? error
        }
        guard let failure else { return }
        state.withLock { $0.log.logger.warning("\(deviceType.name): a call event could not be retired: \(failure)") }
    }

    func writeStatus(_ value: UInt8, _ s: inout DeviceState) {
        if value == 0 {
            reset(&s)
            return
        }
        // The driver waits for 0 after a reset (virtio 1.2 section 4.1.4.3.1).
        guard !s.resetting else {
            s.counters.badStatusWrites += 1
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
            guard value & required == required, s.driverFeatures & ~offeredFeatures == 0,
                s.driverFeatures & VirtioFeature.version1 != 0
            else {
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
        guard added & Status.driverOK != 0 else { return }
        guard s.status & Status.needsReset == 0 else {
            // The device cannot start until it is reset: DRIVER_OK fails the way a
            // failed start does, with the configuration-change interrupt (the
            // driver may have set msix_config only after NEEDS_RESET was set).
            s.isr |= 2
            if s.configVector != Self.noVector { emulator.signal(vector: Int(s.configVector)) }
            return
        }
        start(&s)
    }

    /// DRIVER_OK: checks the rings, binds every enabled queue's doorbell at
    /// once (a notify written before the backend has the queue latches in
    /// its kick eventfd and is served when it has; from DRIVER_OK no notify
    /// exits), and queues the start on the worker (SET_FEATURES,
    /// SET_MEM_TABLE, then per queue NUM/ADDR/BASE/CALL/KICK and ENABLE).
    func start(_ s: inout DeviceState) {
        // Rings outside RAM never reach the backend (checked first, all of them).
        for q in s.queues.indices where s.queues[q].enabled {
            let queue = s.queues[q]
            let n = UInt64(queue.size)
            let ok =
                queue.descriptor % 16 == 0 && queue.driver % 2 == 0 && queue.device % 4 == 0
                && memory.contains(queue.descriptor, length: 16 * n)
                && memory.contains(queue.driver, length: 6 + 2 * n)
                && memory.contains(queue.device, length: 6 + 8 * n)
            if !ok {
                s.counters.badRingAddresses += 1
                s.queues[q].enabled = false
            }
        }
        s.starts += 1
        for q in s.queues.indices where s.queues[q].enabled {
            // A kick left from before the reset is not this start's.
            _ = kicks[q].consume()
            s.queues[q].notifiable = true
            do throws(SystemCallError) {
                try doorbells.bind(
                    kicks[q].fileDescriptor, address: Self.notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
                s.doorbells.insert(q)
            } catch {
                // The reset unbinds those bound so far.
                backendFailed(.systemCall(call: error.call, errno: error.errno), closed: false, &s)
                return
            }
        }
        enqueue(.start, &s)
    }

    /// Device reset (virtio 1.2 section 2.4): every register back to its
    /// reset value now (a notify exits and is dropped); the doorbells are
    /// unbound and the running rings stopped (GET_VRING_BASE) on the worker,
    /// and until they are, device_status
    /// keeps reading its old, non-zero value. The reset completes within its
    /// deadline whatever the backend does: a backend that does not stop its
    /// rings in time, or answers for another ring, loses its connection.
    ///
    /// A backend that is gone (its connection closed: it hung up, or broke
    /// the protocol) has no rings to stop; the reset instead reconnects to
    /// ``socketPath`` and negotiates again, after status reads 0, so that the
    /// driver's re-initialisation runs against the restarted backend. If
    /// nobody listens yet, DRIVER_OK tries again, failing with
    /// DEVICE_NEEDS_RESET and the config interrupt: a driver retries by
    /// resetting again.
    func reset(_ s: inout DeviceState) {
        let previous = s.status
        // Doorbells to unbind, rings to stop (those started on the backend, or a
        // start still queued or under way), events to retire: the worker's job.
        let stopping =
            previous != 0
            && (!s.started.isEmpty || !s.doorbells.isEmpty || s.operations > 0 || s.callsHandedOut)
        var fresh = DeviceState(
            session: s.session, log: s.log, queues: Array(repeating: Queue(), count: queueCount), pci: s.pci)
        fresh.counters = s.counters
        fresh.lastBackendError = s.lastBackendError
        fresh.resets = s.resets
        fresh.starts = s.starts
        fresh.epoch = s.epoch &+ 1
        fresh.operations = s.operations
        fresh.started = s.started
        fresh.startedRings = s.startedRings
        fresh.doorbells = s.doorbells
        fresh.operationTimeout = s.operationTimeout
        fresh.callsHandedOut = s.callsHandedOut
        fresh.disconnectedOnPurpose = s.disconnectedOnPurpose
        s = fresh
        if stopping {
            s.status = previous
            s.resetting = true
            enqueue(.reset, &s)
        } else {
            // Nothing to stop: 0 at once; a closed connection is replaced on the worker.
            enqueue(.reconnect, &s)
        }
    }

    /// Closes the backend connection on purpose, before the VMM stops the
    /// backend at exit: nothing is reported (no NEEDS_RESET, no log line), and
    /// a later reset would reconnect. Idempotent; an exchange under way fails at once.
    public func disconnect() {
        let frontend = state.withLock { s in
            watcher.watch(socket: nil, connection: s.session.connection)
            s.started = []
            // An operation under way fails when the socket shuts down: stale, not reported.
            s.epoch &+= 1
            s.disconnectedOnPurpose = true
            return s.session.frontend
        }
        watcher.shutDownConnection()
        frontend.close()
    }

    /// The watcher saw connection `connection`'s socket hang up (POLLHUP or
    /// POLLRDHUP: the backend exited or closed it) and shut it down, whether
    /// or not a message was under way: the device closes it and needs a reset.
    func backendHungUp(connection: Int) {
        let frontend = state.withLock { s in s.session.connection == connection ? s.session.frontend : nil }
        guard let frontend, frontend.isConnected else { return }
        // Outside the device lock: an exchange under way holds the front-end's own.
        frontend.close()
        state.withLock { s in
            guard s.session.connection == connection else { return }
            backendFailed(.disconnected(nil), closed: true, &s)
        }
        retireEventsIfHandedOut()
    }
}
#endif
