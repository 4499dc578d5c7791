#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdLinux
import Synchronization
import VhostUser
import VirtqueueWalk

/// What the VMM-queue thread asks of its device.
protocol VMMQueueClient: AnyObject, Sendable {
    /// Queue `q`'s doorbell rang: serve what the driver made available.
    func serveVMMQueue(_ q: Int)
}

/// The thread that waits on the kicks of the queues a device type serves in
/// the VMM (``VirtioDeviceType/isServedByVMM(queue:)``): their doorbells are
/// KVM_IOEVENTFD bindings like every queue's, so a notify costs the vCPU no
/// exit, and the request is served off the vCPU thread, on the device's worker
/// (a request may wait on the backend: virtio-net's VQ_PAIRS_SET sends SET_VRING_ENABLE).
final class VMMQueuePoller: Sendable {
    private let queues: [Int]
    private let kicks: [EventFD]
    private let stopEvent: EventFD
    private let done: EventFD
    /// The thread's pthread_self(), once it runs (``stop()`` must not wait for itself).
    private let thread = Mutex<pthread_t?>(nil)

    /// Waits on `kicks[q]` for each q in `queues`.
    init(queues: [Int], kicks: [EventFD]) throws(IrqFdError) {
        self.queues = queues
        self.kicks = queues.map { kicks[$0] }
        stopEvent = try EventFD()
        done = try EventFD()
    }

    /// Starts the thread; it holds `device` weakly (the device's deinit stops it).
    /// Once ``stop()`` has returned it may start again (a device thawed after a hand-off that failed).
    func start(device: any VMMQueueClient, name: String) {
        // The previous thread, if any, ended: its stop request and end are not this one's.
        _ = stopEvent.consume()
        _ = done.consume()
        let thread = Thread { [self, weak device] in
            self.thread.withLock { $0 = pthread_self() }
            let watched = (kicks + [stopEvent]).map { (descriptor: $0.fileDescriptor, events: Readiness.readable) }
            while true {
                // poll(2) fails only on a bad argument (EINTR is retried): nothing a later round would fix.
                guard let ready = try? Readiness.wait(on: watched, timeout: .seconds(1)) else { break }
                if !ready[kicks.count].isEmpty { break }
                for (i, q) in queues.enumerated() where !ready[i].isEmpty {
                    // One pass serves every request published so far, however many notifies it took.
                    _ = kicks[i].consume()
                    device?.serveVMMQueue(q)
                }
            }
            done.signal()
        }
        thread.name = "\(name) vmm queues"
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Tells the thread to end and waits (up to 5 s) for it, unless called
    /// on the thread itself (the device's last reference can go there).
    func stop() {
        stopEvent.signal()
        let onThread = thread.withLock { t in t.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
        // The end stays latched: a second stop (a frozen device's deinit) returns at once.
        if !onThread, done.wait(timeout: .seconds(5)) { done.signal() }
    }
}

/// The context a device type serves a request in: the backend connection
/// and which queues run, for the length of one request.
final class ServedRequestContext: VMMQueueContext {
    let driverFeatures: UInt64
    let writableCount: Int
    private let running: [Bool]
    private let frontend: VhostUserFrontend
    /// The first backend failure, reported by the device once the request is answered.
    private(set) var failure: VhostUserError?

    init(driverFeatures: UInt64, writableCount: Int, running: [Bool], frontend: VhostUserFrontend) {
        self.driverFeatures = driverFeatures
        self.writableCount = writableCount
        self.running = running
        self.frontend = frontend
    }

    func isRunning(queue q: Int) -> Bool { running.indices.contains(q) && running[q] }

    func setBackendQueue(_ q: Int, enabled: Bool) throws(VhostUserError) {
        do { try frontend.setVringEnable(queue: UInt32(q), enabled: enabled) } catch {
            if failure == nil { failure = error }
            throw error
        }
    }
}

/// Queues the VMM serves itself: started at DRIVER_OK (no backend message,
/// only the doorbell), and each request walked, handed to the device type,
/// answered in the used ring and completed by the queue's call fd (virtio
/// 1.2 section 2.7.8), the same eventfd a backend would signal, so the
/// interrupt takes the same route as every other queue's.
extension VirtioPCIDevice: VMMQueueClient {
    /// VIRTIO_F_INDIRECT_DESC (28) and VIRTIO_F_EVENT_IDX (29).
    private static var indirectDescriptors: UInt64 { 1 << 28 }
    private static var eventIndex: UInt64 { 1 << 29 }
    /// The most device-readable bytes a served request may carry.
    static var servedRequestLimit: Int { 4096 }

    /// DRIVER_OK for the queues the VMM serves, once the backend's rings
    /// have started (a request on them may enable the backend's rings): their
    /// doorbells were bound with the others at the DRIVER_OK write; they now
    /// run, and a request the driver published meanwhile is served at once
    /// (its kick may have been read while the queue was not running yet).
    func startVMMServedQueues(epoch: Int) {
        let served = state.withLock { s -> [Int] in
            guard s.epoch == epoch else { return [] }
            let served = s.queues.indices.filter { s.queues[$0].notifiable && deviceType.isServedByVMM(queue: $0) }
            for q in served {
                s.queues[q].nextAvailable = 0
                s.queues[q].running = true
            }
            return served
        }
        // On the worker already: served here, before any later operation.
        for q in served { performServe(q, epoch: epoch) }
    }

    /// Queue `q`'s doorbell rang: its requests are served on the worker, like
    /// every operation that may wait on the backend (VQ_PAIRS_SET sends
    /// SET_VRING_ENABLE), never under the device lock, so a vCPU's access (an
    /// MSI-X PBA read, a register) does not wait for the backend. The thread
    /// waits until they are served: notifies meanwhile coalesce in the kick
    /// eventfd, and at most one pass is queued.
    func serveVMMQueue(_ q: Int) {
        let queued = state.withLock { s -> Bool in
            guard s.queues.indices.contains(q), s.queues[q].running, s.status & Status.needsReset == 0 else {
                return false
            }
            enqueue(.serve(queue: q), &s)
            return true
        }
        if queued { worker.sync {} }
    }

    /// Serves every request published on queue `q` since the last pass, at
    /// most one ring's worth (a driver cannot keep the thread here), in `s`:
    /// a copy of the device state taken for the pass (``performServe(_:epoch:)``
    /// records what changed). Returns the first backend failure.
    func serve(_ q: Int, _ s: inout DeviceState) -> VhostUserError? {
        let queue = s.queues[q]
        let ram = GuestRAM(memory)
        let n = queue.size
        let usedBefore = queue.nextAvailable
        var failure: VhostUserError?
        for _ in 0..<Int(n) {
            guard let published = ram.load(UInt16.self, at: queue.driver + 2) else { break }
            let next = s.queues[q].nextAvailable
            guard published != next else { break }
            // More than a ring's worth ahead: the driver broke the ring (section 2.7.13.3).
            guard published &- next <= n else {
                s.counters.badServedRequests += 1
                break
            }
            let slot = UInt64(next % n)
            guard let head = ram.load(UInt16.self, at: queue.driver + 4 + 2 * slot) else { break }
            var written: UInt32 = 0
            let chain = ram.chain(
                head: head, table: queue.descriptor, size: n,
                indirectTables: s.driverFeatures & Self.indirectDescriptors != 0)
            if let chain, chain.fault == nil {
                let running = s.queues.map(\.running)
                let context = ServedRequestContext(
                    driverFeatures: s.driverFeatures, writableCount: Int(chain.writableBytes), running: running,
                    frontend: s.session.frontend)
                let request = chain.readableBytes(limit: Self.servedRequestLimit)
                if let reply = deviceType.serve(request: request, queue: q, context: context) {
                    written = chain.writeBack(reply)
                }
                if failure == nil { failure = context.failure }
            } else {
                // Refused whole: used with nothing written, so the driver gets its descriptors back.
                s.counters.badServedRequests += 1
            }
            // The element, then the index that publishes it (x86 keeps stores in order).
            ram.store(UInt32(head), at: queue.device + 4 + 8 * slot)
            ram.store(written, at: queue.device + 8 + 8 * slot)
            s.queues[q].nextAvailable = next &+ 1
            atomicMemoryFence(ordering: .releasing)
            ram.store(next &+ 1, at: queue.device + 2)
        }
        let usedAfter = s.queues[q].nextAvailable
        let eventIndex = s.driverFeatures & Self.eventIndex != 0
        // avail_event (section 2.7.10): notify again for the next request on.
        if eventIndex { ram.store(usedAfter, at: queue.device + 4 + 8 * UInt64(n)) }
        if usedAfter != usedBefore, wantsInterrupt(queue, old: usedBefore, new: usedAfter, eventIndex, ram) {
            signalCall(queue: q, vector: queue.vector)
        }
        return failure
    }

    /// Whether the driver asked for an interrupt (section 2.7.10): used_event
    /// with VIRTIO_F_EVENT_IDX, else the available ring's NO_INTERRUPT flag.
    private func wantsInterrupt(_ queue: Queue, old: UInt16, new: UInt16, _ eventIndex: Bool, _ ram: GuestRAM) -> Bool {
        if eventIndex {
            guard let event = ram.load(UInt16.self, at: queue.driver + 4 + 2 * UInt64(queue.size)) else { return true }
            return new &- event &- 1 < new &- old
        }
        guard let flags = ram.load(UInt16.self, at: queue.driver) else { return true }
        return flags & 1 == 0
    }

    /// What a backend does to complete: signal the queue's call fd (the
    /// vector's route event, or with `.userspace` delivery the eventfd the
    /// device's watcher injects from). No vector: no interrupt.
    private func signalCall(queue q: Int, vector: UInt16) {
        guard vector != Self.noVector else { return }
        if delivery == .userspace {
            calls.event(queue: q).signal()
        } else if let event = try? emulator.event(for: Int(vector)) {
            event.signal()
        }
    }
}

#endif
