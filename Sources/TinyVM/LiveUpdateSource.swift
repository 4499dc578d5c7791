#if os(Linux)
import Foundation
public import IrqFdCore
public import IrqFdKVM
import IrqFdLinux
public import IrqFdRouting
import Synchronization

/// The running VMM's side of a live update: listens on a Unix socket for a
/// successor and hands it the guest (see ``LiveUpdateChannel`` for the
/// conversation). A hand-off that fails before the successor is told to
/// commit leaves the guest running here as before: routes re-armed, devices
/// thawed, vCPUs resumed, every descriptor the attempt made closed; `log` gets
/// one line saying why. After a commit this VM is stopped for good.
public final class LiveUpdateSource: Sendable {
    /// How a hand-off ended, once one has committed.
    public enum Completion: Sendable, Equatable {
        /// The successor took over and said so.
        case takenOver
        /// The successor was told to commit but never confirmed: the guest
        /// may be lost (the window is the successor's arm and start).
        case unconfirmed(String)
    }

    /// How long each step may take: before the pause (the successor makes
    /// its VM meanwhile), and in all while the guest is paused.
    public struct Deadlines: Sendable {
        /// For the hello and the successor's VM, before the pause.
        public var beforePause: Duration
        /// From the pause to the successor's ready: the longest a failing hand-off pauses the guest.
        public var paused: Duration
        /// For the successor's confirmation after the commit.
        public var confirmation: Duration

        /// Deadlines from their parts.
        public init(
            beforePause: Duration = .seconds(5), paused: Duration = .seconds(2), confirmation: Duration = .seconds(5)
        ) {
            self.beforePause = beforePause
            self.paused = paused
            self.confirmation = confirmation
        }
    }

    /// The VM handed over.
    public let vm: TinyVM
    private let listener: UnixSocket
    private let devices: [any LiveUpdateDevice]
    private let routes: [KVMIrqFdRoute]
    private let deadlines: Deadlines
    private let log: @Sendable (String) -> Void
    private let stopping = Atomic<Bool>(false)
    private let completion = Mutex<Completion?>(nil)
    private let busy = Atomic<Bool>(false)
    private let ended: EventFD
    private let attempts = Atomic<Int>(0)
    private let timeline = Mutex<LiveUpdateTimeline?>(nil)

    /// Listens at `path` for a successor to `vm`, which moves with `devices`
    /// and the VMM's own `routes` (adopted by the successor's partition). Call
    /// `start()` once the VM runs.
    public init(
        vm: TinyVM, listeningAt path: String, devices: [any LiveUpdateDevice], routes: [KVMIrqFdRoute] = [],
        deadlines: Deadlines = Deadlines(), log: @escaping @Sendable (String) -> Void
    ) throws(IrqFdError) {
        self.vm = vm
        self.devices = devices
        self.routes = routes
        self.deadlines = deadlines
        self.log = log
        ended = try EventFD()
        listener = try UnixSocket.listen(at: path)
    }

    /// Serves successors, one at a time, on a thread of its own until one takes over or `stop()`.
    public func start() {
        let thread = Thread { [self] in serve() }
        thread.name = "live update"
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Stops listening (a hand-off under way finishes first).
    public func stop() {
        stopping.store(true, ordering: .releasing)
    }

    /// How the hand-off ended, if one committed.
    public var completed: Completion? { completion.withLock { $0 } }

    /// The committed hand-off's timeline, both sides' steps, once the
    /// successor confirmed (an earlier build's successor sends only its own
    /// absence: then only this side's steps).
    public var handOffTimeline: LiveUpdateTimeline? { timeline.withLock { $0 } }

    /// Hand-offs attempted so far (failed ones included).
    public var attemptCount: Int { attempts.load(ordering: .acquiring) }

    /// Waits until no hand-off is under way (one that committed has finished
    /// its confirmation), then returns how it ended, if one committed.
    public func waitUntilSettled() -> Completion? {
        stop()
        while busy.load(ordering: .acquiring) { _ = ended.wait(timeout: .milliseconds(20)) }
        return completed
    }

    private func serve() {
        while !stopping.load(ordering: .acquiring), !vm.hasEnded {
            let ready: Readiness?
            do {
                ready = try Readiness.readable.wait(on: listener.fileDescriptor, until: .now + .milliseconds(100))
            } catch {
                log("live update: waiting for a successor failed: \(error); no more live updates")
                return
            }
            guard ready != nil else { continue }
            busy.store(true, ordering: .releasing)
            defer {
                busy.store(false, ordering: .releasing)
                ended.signal()
            }
            if stopping.load(ordering: .acquiring) { return }
            let connection: UnixSocket
            do { connection = try listener.accept() } catch {
                log("live update failed: accepting the successor: \(error); the guest runs on")
                continue
            }
            attempts.add(1, ordering: .acquiringAndReleasing)
            if let done = handOff(LiveUpdateChannel(connection)) {
                completion.withLock { $0 = done }
                if case .unconfirmed(let why) = done {
                    log("live update: the successor did not confirm the takeover (\(why)); the guest may be lost")
                }
                return
            }
        }
    }

    /// One attempt; nil when it failed and the guest runs on here.
    private func handOff(_ channel: LiveUpdateChannel) -> Completion? {
        var marks = LiveUpdateTimeline()
        do throws(LiveUpdateError) {
            try commit(channel, &marks)
        } catch {
            log("live update failed: \(error); the guest runs on")
            return nil
        }
        for device in devices { device.release() }
        vm.stop()
        do throws(LiveUpdateError) {
            let (confirmation, _) = try channel.receive(
                .takenOver, step: "takeover", deadline: .now + deadlines.confirmation)
            // The timeline is a measurement: one that does not read leaves this side's own marks.
            try? marks.decode(confirmation, into: LiveUpdateTimeline.allSteps)
            timeline.withLock { $0 = marks }
            return .takenOver
        } catch {
            return .unconfirmed("\(error)")
        }
    }

    /// A route's MSI and mask as they cross.
    private static func state(of route: KVMIrqFdRoute) -> LiveUpdateState.Route {
        LiveUpdateState.Route(msi: route.msi.map { ($0.address, $0.data) }, masked: route.isMasked)
    }

    /// Everything up to and including the commit; on any failure, the guest
    /// is running here again when this throws.
    private func commit(_ channel: LiveUpdateChannel, _ marks: inout LiveUpdateTimeline) throws(LiveUpdateError) {
        let before = ContinuousClock.now + deadlines.beforePause
        let (hello, _) = try channel.receive(.hello, step: "hello", deadline: before)
        var reader = LiveUpdateState.Reader(bytes: hello)
        let lowest: UInt32
        let highest: UInt32
        do {
            lowest = try reader.u32("lowest version")
            highest = try reader.u32("highest version")
        } catch { throw .protocolViolation(step: "hello", reason: "\(error)") }
        guard reader.offset == hello.count, lowest <= highest else {
            throw .protocolViolation(step: "hello", reason: "a malformed hello")
        }
        // The latest version both sides know: a successor of an earlier build gets the conversation it knows.
        let version = min(highest, LiveUpdateState.currentVersion)
        guard version >= lowest, LiveUpdateState.readableVersions.contains(version) else {
            throw .unsupportedVersion(offered: lowest...highest, writes: LiveUpdateState.currentVersion)
        }
        let routeEvents = try routes.map { route throws(LiveUpdateError) in
            guard let event = route.event as? EventFD else { throw .machine("a route's event is not an eventfd") }
            return event.fileDescriptor
        }
        // From version 2 the routes and their events go before the pause: the
        // successor makes them, masked, and pushes their MSIs while the guest
        // runs here. Nothing is armed there before the commit, so every signal
        // stays in its event for whichever VM runs the guest.
        let offersRoutes = version >= LiveUpdateState.routesOfferedVersion
        var offer = PayloadWriter()
        offer.u32(version)
        offer.u32(UInt32(vm.configuration.cpus))
        offer.u64(UInt64(vm.configuration.memorySize))
        offer.u8(vm.configuration.coalescesCommits ? 1 : 0)
        if offersRoutes { LiveUpdateState.write(routes.map(Self.state(of:)), into: &offer) }
        try channel.send(
            .offer, offer.bytes, descriptors: [vm.memory.fileDescriptor], step: "offer", deadline: before)
        if offersRoutes { try channel.sendDescriptors(routeEvents, step: "offer", deadline: before) }
        let msrs: [UInt32]
        do { msrs = try vm.machineStateMSRs() } catch { throw .machine("\(error)") }
        _ = try channel.receive(.prepared, step: "successor's VM", deadline: before)

        marks.pauseRequested = LiveUpdateTimeline.now()
        guard vm.pause(timeout: deadlines.paused) else { throw .machine("the vCPUs did not stop") }
        marks.paused = vm.pausedAtNanoseconds
        let paused = ContinuousClock.now + deadlines.paused
        var disarmed: [KVMIrqFdRoute] = []
        var frozen: [(device: any LiveUpdateDevice, image: FrozenDevice)] = []
        func rollBack() {
            for (device, _) in frozen.reversed() { device.thaw() }
            for route in disarmed { try? route.unmask() }
            vm.resume()
        }
        do throws(LiveUpdateError) {
            let states = routes.map(Self.state(of:))
            for route in routes where !route.isMasked {
                do throws(IrqFdError) { try route.mask() } catch {
                    throw .machine("disarming a route: \(error)")
                }
                disarmed.append(route)
            }
            marks.disarmed = LiveUpdateTimeline.now()
            for device in devices { frozen.append((device, try device.freeze())) }
            marks.devicesFrozen = LiveUpdateTimeline.now()
            let machine: MachineState
            do { machine = try vm.saveMachineState(msrs: msrs) } catch { throw .machine("\(error)") }
            marks.machineSaved = LiveUpdateTimeline.now()
            let state = LiveUpdateState(
                machine: machine, routes: states, devices: frozen.map { ($0.device.liveUpdateName, $0.image.state) })
            var header = PayloadWriter()
            header.u64(vm.pausedAtNanoseconds)
            header.u32(offersRoutes ? 0 : UInt32(routes.count))
            header.u32(UInt32(frozen.count))
            for (_, image) in frozen { header.u32(UInt32(image.descriptors.count)) }
            try channel.send(
                .state, header.bytes + state.encoded(version: version), step: "state", deadline: paused)
            try channel.sendDescriptors(
                (offersRoutes ? [] : routeEvents) + frozen.flatMap(\.image.descriptors), step: "descriptors",
                deadline: paused)
            marks.stateSent = LiveUpdateTimeline.now()
            _ = try channel.receive(.ready, step: "successor's restore", deadline: paused)
            marks.readyReceived = LiveUpdateTimeline.now()
            // From here the successor may arm: this VM never runs the guest again.
            marks.commitSent = LiveUpdateTimeline.now()
            try channel.send(
                .commit, marks.encoded(LiveUpdateTimeline.oldSteps), step: "commit", deadline: paused)
        } catch {
            rollBack()
            throw error
        }
    }
}
#endif
