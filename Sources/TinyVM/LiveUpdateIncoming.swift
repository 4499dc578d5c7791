#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
public import IrqFdKVM
import IrqFdLinux
public import IrqFdRouting
import SystemPackage

/// The successor's side of a live update: connects to a running VMM's
/// update socket and, before the old VMM pauses the guest, makes its VM over
/// the guest RAM it is sent, its vCPU threads (waiting to run) and (from state
/// version 2) the routes it is offered, masked, their MSIs pushed. Then it
/// restores the vCPUs and devices and, after the old VMM commits, arms every
/// route (version 1: adopts them in one batch first), wakes the vCPU threads
/// and confirms. Any failure before the commit leaves the guest with the old
/// VMM; this side then holds nothing (its threads have ended, every received
/// descriptor is closed).
public struct LiveUpdateIncoming {
    /// The VM now running the guest.
    public let vm: TinyVM
    /// The VMM's own routes, adopted (for the next hand-off).
    public let routes: [KVMIrqFdRoute]
    /// The devices rebuilt here (for the next hand-off).
    public let devices: [any LiveUpdateDevice]
    /// From the last vCPU parked in the old VM to the first vCPU about to run here, nanoseconds.
    public let pauseNanoseconds: UInt64
    /// Route events adopted (the VMM's and every device's).
    public let routeCount: Int
    /// Queue eventfds adopted.
    public let queueCount: Int
    /// vhost-user messages sent while taking over.
    public let vhostUserMessages: Int
    /// When each step happened, both sides' (the old VMM's came with its commit).
    public let timeline: LiveUpdateTimeline

    /// The line a successor prints per hand-off.
    public var summary: String {
        "live update: paused \(pauseNanoseconds / 1000) µs; \(routeCount) routes, \(queueCount) queues, "
            + "\(vhostUserMessages) vhost-user messages"
    }

    /// Takes the guest over from the VMM listening at `path`; `kinds` rebuild
    /// its devices by name (a device of another name is refused before the
    /// commit). `deadline` bounds each wait.
    public static func takeOver(
        from path: String, kinds: [LiveUpdateDeviceKind], echoConsole: Bool = false,
        deadline step: Duration = .seconds(10)
    ) throws(LiveUpdateError) -> LiveUpdateIncoming {
        try takeOver(
            from: path, kinds: kinds, echoConsole: echoConsole, deadline: step,
            versions: LiveUpdateState.readableVersions)
    }

    /// `takeOver(from:kinds:echoConsole:deadline:)` saying it reads only
    /// `versions` (a subrange of `LiveUpdateState.readableVersions`): how a
    /// successor of an earlier build talks.
    package static func takeOver(
        from path: String, kinds: [LiveUpdateDeviceKind], echoConsole: Bool = false,
        deadline step: Duration = .seconds(10), versions: ClosedRange<UInt32>
    ) throws(LiveUpdateError) -> LiveUpdateIncoming {
        precondition(LiveUpdateState.readableVersions.contains(versions.lowerBound))
        precondition(LiveUpdateState.readableVersions.contains(versions.upperBound))
        let socket: UnixSocket
        do { socket = try UnixSocket.connect(to: path, deadline: .now + step) } catch {
            throw .transport(step: "connect", reason: "\(error)")
        }
        var marks = LiveUpdateTimeline()
        marks.connected = LiveUpdateTimeline.now()
        let channel = LiveUpdateChannel(socket)
        var hello = PayloadWriter()
        hello.u32(versions.lowerBound)
        hello.u32(versions.upperBound)
        try channel.send(.hello, hello.bytes, step: "hello", deadline: .now + step)
        let (offer, ram) = try channel.receive(.offer, maximumDescriptors: 1, step: "offer", deadline: .now + step)
        var reader = LiveUpdateState.Reader(bytes: offer)
        let version: UInt32
        let cpus: UInt32
        let memorySize: UInt64
        let coalescing: UInt8
        do {
            version = try reader.u32("version")
            cpus = try reader.u32("vCPUs")
            memorySize = try reader.u64("RAM size")
            coalescing = try reader.u8("coalescing")
        } catch { throw .protocolViolation(step: "offer", reason: "\(error)") }
        guard ram.count == 1, versions.contains(version), coalescing <= 1, memorySize <= 1 << 30 else {
            throw .protocolViolation(
                step: "offer", reason: "version \(version), \(ram.count) descriptors, \(memorySize) bytes of RAM")
        }
        // From version 2 the routes come now, with their events, to be made before the pause.
        var offered: [LiveUpdateState.Route]?
        if version >= LiveUpdateState.routesOfferedVersion {
            do { offered = try LiveUpdateState.routes(&reader) } catch {
                throw .protocolViolation(step: "offer", reason: "\(error)")
            }
        }
        guard reader.offset == offer.count else {
            throw .protocolViolation(step: "offer", reason: "\(offer.count - reader.offset) bytes after the offer")
        }
        let offeredEvents = try channel.receiveDescriptors(
            offered?.count ?? 0, step: "offered routes", deadline: .now + step)
        let vm = try makeVM(
            ram: ram[0], size: Int(memorySize), cpus: Int(cpus), coalescing: coalescing == 1, echoConsole: echoConsole)
        // Its vCPU threads too, waiting to run: the pause then only wakes them.
        vm.prepareThreads()
        marks.threadsReady = vm.threadsReadyNanoseconds
        do throws(LiveUpdateError) {
            var early: [KVMIrqFdRoute]?
            if let offered {
                early = try makeMasked(offered, over: offeredEvents, in: vm)
                marks.routesPushed = LiveUpdateTimeline.now()
            }
            return try takeOver(vm, over: channel, kinds: kinds, routes: early, marks: marks, deadline: step)
        } catch {
            // The waiting threads hold the VM: they end here, and with them everything the attempt made.
            vm.stop()
            _ = vm.wait()
            throw error
        }
    }

    /// From the successor's ready VM on: restores what the old VMM sends
    /// and, once it commits, arms and starts.
    /// `early`: the routes made before the pause (version 2 and later), all
    /// masked, each to be given its final MSI and armed unless masked.
    private static func takeOver(
        _ vm: TinyVM, over channel: LiveUpdateChannel, kinds: [LiveUpdateDeviceKind], routes early: [KVMIrqFdRoute]?,
        marks: LiveUpdateTimeline, deadline step: Duration
    ) throws(LiveUpdateError) -> LiveUpdateIncoming {
        var marks = marks
        marks.prepared = LiveUpdateTimeline.now()
        try channel.send(.prepared, step: "prepared", deadline: .now + step)

        // The old VMM pauses the guest now: from here every wait is part of the pause.
        let (stateFrame, _) = try channel.receive(.state, step: "state", deadline: .now + step)
        var reader = LiveUpdateState.Reader(bytes: stateFrame)
        let pausedAt: UInt64
        var counts: [Int] = []
        let routeDescriptors: Int
        do {
            pausedAt = try reader.u64("pause time")
            routeDescriptors = Int(try reader.u32("route count"))
            let deviceCount = try reader.u32("device count")
            guard deviceCount <= 1024 else { throw LiveUpdateState.DecodingError.malformed("\(deviceCount) devices") }
            for _ in 0..<deviceCount { counts.append(Int(try reader.u32("device descriptor count"))) }
        } catch { throw .protocolViolation(step: "state", reason: "\(error)") }
        let state: LiveUpdateState
        do { state = try LiveUpdateState(decoding: Array(stateFrame[reader.offset...])) } catch {
            throw .protocolViolation(step: "state", reason: "\(error)")
        }
        marks.stateReceived = LiveUpdateTimeline.now()
        let total = routeDescriptors + counts.reduce(0, +)
        let routesMatch =
            early.map { state.routes.count == $0.count && routeDescriptors == 0 }
            ?? (state.routes.count == routeDescriptors)
        guard routesMatch, state.devices.count == counts.count, total <= 65_536 else {
            throw .protocolViolation(step: "state", reason: "descriptor counts do not match the state")
        }
        let descriptors = try channel.receiveDescriptors(total, step: "descriptors", deadline: .now + step)
        marks.descriptorsReceived = LiveUpdateTimeline.now()
        do { try vm.restoreMachineState(state.machine) } catch { throw .machine("\(error)") }
        var routeStates: [RouteHandOffState] = []
        for (route, descriptor) in zip(state.routes, descriptors[..<routeDescriptors]) {
            let event: EventFD
            do { event = try EventFD.adopting(checking: descriptor.take()) } catch {
                throw .protocolViolation(step: "routes", reason: "a route's descriptor \(error)")
            }
            routeStates.append(
                RouteHandOffState(
                    event: event, msi: route.message, masked: route.masked))
        }
        var incoming: [any IncomingLiveUpdateDevice] = []
        var next = routeDescriptors
        for ((name, bytes), count) in zip(state.devices, counts) {
            guard let kind = kinds.first(where: { $0.name == name }) else {
                throw .device(name: name, reason: "this VMM does not know the device")
            }
            let own = Array(descriptors[next..<next + count])
            next += count
            incoming.append(try kind.rebuild(vm, bytes, own))
        }
        if let early {
            // A route whose MSI changed since the offer gets it now (one push
            // for all of them, none if none changed); still masked, still unarmed.
            do {
                try vm.irqfd.withBatch { () throws(IrqFdError) in
                    for (route, final) in zip(early, state.routes) {
                        let msi = final.message
                        guard route.msi != msi else { continue }
                        if let msi { try route.setMsi(msi) } else { try route.clearMsi() }
                    }
                }
            } catch { throw .machine("the routes' MSIs: \(error)") }
        }
        marks.restored = LiveUpdateTimeline.now()
        try channel.send(.ready, step: "ready", deadline: .now + step)
        let (commit, _) = try channel.receive(.commit, step: "commit", deadline: .now + step)
        marks.commitReceived = LiveUpdateTimeline.now()
        // The old VMM's marks are a measurement: ones that do not read are left out, not a failure.
        try? marks.decode(commit, into: LiveUpdateTimeline.oldSteps)

        // Committed: the old VMM is stopping. The routes made before the
        // pause only arm (their entries are in the kernel); otherwise one push
        // for every route, then the arms.
        let adopted: [KVMIrqFdRoute]
        do {
            adopted = try vm.irqfd.withBatch { () throws(IrqFdError) -> [KVMIrqFdRoute] in
                let adopted: [KVMIrqFdRoute]
                if let early {
                    for (route, final) in zip(early, state.routes) where !final.masked { try route.unmask() }
                    adopted = early
                } else {
                    adopted = try vm.irqfd.adoptRoutes(routeStates)
                }
                for device in incoming {
                    do throws(LiveUpdateError) { try device.start() } catch {
                        throw .unsupported("\(error)")
                    }
                }
                return adopted
            }
        } catch { throw .machine("arming after the commit: \(error)") }
        marks.armed = LiveUpdateTimeline.now()
        vm.start()
        while vm.firstRunNanoseconds == 0, !vm.hasEnded { sched_yield() }
        marks.running = vm.firstRunNanoseconds
        marks.paused = pausedAt
        // The old VMM only logs a missing confirmation: the guest runs here either way.
        try? channel.send(
            .takenOver, marks.encoded(LiveUpdateTimeline.allSteps), step: "taken over", deadline: .now + step)
        return LiveUpdateIncoming(
            vm: vm, routes: adopted, devices: incoming.map(\.device),
            pauseNanoseconds: vm.firstRunNanoseconds &- pausedAt,
            routeCount: state.routes.count + incoming.reduce(0) { $0 + $1.routes },
            queueCount: incoming.reduce(0) { $0 + $1.queues },
            vhostUserMessages: incoming.reduce(0) { $0 + $1.vhostUserMessages }, timeline: marks)
    }

    /// The routes offered before the pause, in `vm`'s partition over their
    /// `events`: masked, so nothing is armed and every signal stays in its
    /// event, with their MSIs pushed in one batch.
    private static func makeMasked(
        _ routes: [LiveUpdateState.Route], over events: [ReceivedDescriptor], in vm: TinyVM
    ) throws(LiveUpdateError) -> [KVMIrqFdRoute] {
        var adopted: [EventFD] = []
        for descriptor in events {
            do { adopted.append(try EventFD.adopting(checking: descriptor.take())) } catch {
                throw .protocolViolation(step: "offered routes", reason: "a route's descriptor \(error)")
            }
        }
        do {
            return try vm.irqfd.withBatch { () throws(IrqFdError) -> [KVMIrqFdRoute] in
                try zip(routes, adopted).map { route, event throws(IrqFdError) -> KVMIrqFdRoute in
                    let made = try vm.irqfd.newRoute(adopting: event)
                    try made.mask()
                    if let msi = route.message { try made.setMsi(msi) }
                    return made
                }
            }
        } catch { throw .machine("making the offered routes: \(error)") }
    }

    /// The successor's VM over the RAM that came over, checked to be as large as said.
    private static func makeVM(
        ram descriptor: ReceivedDescriptor, size: Int, cpus: Int, coalescing: Bool, echoConsole: Bool
    ) throws(LiveUpdateError) -> TinyVM {
        var status = stat()
        guard let raw = descriptor.borrowed, fstat(raw.rawValue, &status) == 0, Int(status.st_size) >= size else {
            throw .protocolViolation(step: "offer", reason: "the RAM descriptor is not \(size) bytes")
        }
        let memory: GuestMemory
        do { memory = try GuestMemory(mapping: descriptor.take(), size: size) } catch {
            throw .machine("mapping the guest RAM: \(error)")
        }
        do {
            return try TinyVM(
                .init(cpus: cpus, memorySize: size, echoConsole: echoConsole, coalescesCommits: coalescing),
                incoming: memory)
        } catch { throw .machine("\(error)") }
    }
}
extension LiveUpdateState.Route {
    /// The route's MSI as the routing layer takes it.
    fileprivate var message: MsiMessage? { msi.map { MsiMessage(address: $0.address, data: $0.data) } }
}
#endif
