#if os(Linux)
import IrqFdCore
import IrqFdLinux
import MSIX
import VhostUser

/// The device_status state machine (virtio 1.2 sections 2.1, 2.4 and 3.1.1):
/// feature negotiation, DRIVER_OK starting the queues on the backend, reset
/// stopping them, and a backend that fails or goes away.
extension VirtioPCIDevice {
    /// The call fd queue `q` hands the backend for vector `vector`.
    func callFD(queue q: Int, vector: UInt16) -> Int32? {
        if vector == Self.noVector || delivery == .userspace { return ownCalls[q].fileDescriptor.rawValue }
        guard let event = try? emulator.event(for: Int(vector)) else { return nil }
        return Int32(truncatingIfNeeded: event.nativeHandle.rawValue)
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
    /// other vector (masked, it latches in the PBA), and one rate-limited log line.
    func backendFailed(_ error: VhostUserError, _ s: inout DeviceState) {
        s.counters.backendFailures += 1
        s.lastBackendError = error
        s.status |= Status.needsReset
        s.configGeneration &+= 1
        s.isr |= 2
        // A closed connection keeps no socket open through the watcher's copy.
        if !s.session.frontend.isConnected { watcher.watch(socket: nil, connection: s.session.connection) }
        s.log.report(error, socketPath: socketPath, needsReset: true)
        if s.configVector != Self.noVector { emulator.signal(vector: Int(s.configVector)) }
    }

    func writeStatus(_ value: UInt8, _ s: inout DeviceState) {
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
        if added & Status.driverOK != 0, s.status & Status.needsReset == 0 { start(&s) }
    }

    /// DRIVER_OK: SET_FEATURES, SET_MEM_TABLE, then per enabled queue
    /// NUM/ADDR/BASE/CALL/KICK, its doorbell, and ENABLE.
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
        do throws(VhostUserError) {
            // A backend that died since the last reset, and was not back
            // then, gets another chance here.
            if !s.session.frontend.isConnected { try reconnect(&s) }
            let session = s.session
            let protocolBit = backendFeatures & VirtioFeature.vhostProtocolFeatures
            // The backend hears only of features it offered and implements (vhost-user
            // SET_FEATURES: a subset of GET_FEATURES; DPDK refuses anything else).
            let backendShare = s.driverFeatures & backendFeatures & ~deviceType.featuresServedByVMM
            try session.setUp(driverFeatures: backendShare, protocolBit: protocolBit, memory: memory)
            for q in s.queues.indices where s.queues[q].enabled {
                let queue = s.queues[q]
                _ = kicks[q].consume()
                if deviceType.isServedByVMM(queue: q) {
                    try startServedByVMM(q, &s)
                    continue
                }
                try session.describeRing(
                    q, size: queue.size, descriptor: queue.descriptor, driver: queue.driver, device: queue.device)
                guard let call = callFD(queue: q, vector: queue.vector) else {
                    throw VhostUserError.unsupported("no event for vector \(queue.vector)")
                }
                try session.connectRing(q, call: call, kick: kicks[q].fileDescriptor.rawValue)
                do {
                    try doorbells.bind(
                        kicks[q].fileDescriptor, address: Self.notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
                } catch {
                    throw VhostUserError.systemCall(call: error.call, errno: error.errno)
                }
                s.queues[q].running = true
                if protocolBit != 0, deviceType.isEnabledAtStart(queue: q, driverFeatures: s.driverFeatures) {
                    try session.enableRing(q)
                }
            }
        } catch {
            backendFailed(error, &s)
        }
    }

    /// Device reset (virtio 1.2 section 2.4): stop every running ring with
    /// GET_VRING_BASE, unbind its doorbell, and return every register to its
    /// reset value, all before the status write returns.
    ///
    /// A backend that is gone (its connection closed: it hung up, or broke
    /// the protocol) has no rings to stop; the reset instead reconnects to
    /// ``socketPath`` and negotiates again, so that the driver's
    /// re-initialisation runs against the restarted backend. If nobody
    /// listens yet, the reset still completes (status 0) and DRIVER_OK tries
    /// again, failing with DEVICE_NEEDS_RESET and the config interrupt: a
    /// driver retries by resetting again.
    func reset(_ s: inout DeviceState) {
        var failure: VhostUserError?
        var stopped = false
        for q in s.queues.indices where s.queues[q].running {
            stopped = true
            try? doorbells.unbind(
                kicks[q].fileDescriptor, address: Self.notifyAddress(queue: q), length: 2, datamatch: UInt64(q))
            if failure == nil, s.session.frontend.isConnected, !deviceType.isServedByVMM(queue: q) {
                do throws(VhostUserError) { try s.session.stopRing(q) } catch { failure = error }
            }
            _ = kicks[q].consume()
        }
        if stopped { s.resets += 1 }
        var fresh = DeviceState(
            session: s.session, log: s.log, queues: Array(repeating: Queue(), count: queueCount), pci: s.pci)
        fresh.counters = s.counters
        fresh.resets = s.resets
        fresh.starts = s.starts
        s = fresh
        // A backend that refused (a nonzero REPLY_ACK) but is still connected:
        // DEVICE_NEEDS_RESET, as for any failed call.
        if let failure, s.session.frontend.isConnected {
            backendFailed(failure, &s)
            return
        }
        guard !s.session.frontend.isConnected else { return }
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
    /// negotiated as at creation; the watcher watches the new socket.
    func reconnect(_ s: inout DeviceState) throws(VhostUserError) {
        try s.session.reconnect(
            deviceType: deviceType, required: deviceType.requiredOfRestartedBackend(offered: offeredFeatures))
        watcher.watch(socket: s.session.frontend.socketDescriptor, connection: s.session.connection)
        s.log.reconnected(socketPath: socketPath, connection: s.session.connection)
    }

    /// Closes the backend connection on purpose, before the VMM stops the
    /// backend at exit: nothing is reported (no NEEDS_RESET, no log line), and
    /// a later reset would reconnect. Idempotent.
    public func disconnect() {
        state.withLock { s in
            watcher.watch(socket: nil, connection: s.session.connection)
            s.session.frontend.close()
        }
    }

    /// The watcher saw connection `connection`'s socket hang up (POLLHUP or
    /// POLLRDHUP: the backend exited or closed it), whether or not a message
    /// was under way: the device closes it and needs a reset.
    func backendHungUp(connection: Int) {
        state.withLock { s in
            guard s.session.connection == connection, s.session.frontend.isConnected else { return }
            s.session.frontend.close()
            backendFailed(.disconnected(nil), &s)
        }
    }
}
#endif
