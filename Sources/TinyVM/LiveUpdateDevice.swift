#if os(Linux)
public import SystemPackage

/// A device that moves with its guest to a successor VMM process. The old
/// VMM freezes it once every vCPU is parked, sends its state and descriptors,
/// and then either releases it (the successor took over) or thaws it (the
/// hand-off failed: the device goes on exactly as before the freeze). In the
/// successor, a ``LiveUpdateDeviceKind`` of the same name rebuilds it from
/// that state and those descriptors, and ``IncomingLiveUpdateDevice/start()``
/// arms it once the old VMM has committed.
///
/// The rule every implementation keeps: between `freeze()` and `release()` or
/// `thaw()` nothing the device's peers send may be consumed, only latched
/// (an interrupt route is disarmed, so its event keeps the count; a
/// vhost-user backend's kicks stay in its kick eventfds), and nothing is sent
/// to a peer that it would notice (no vhost-user message).
public protocol LiveUpdateDevice: AnyObject, Sendable {
    /// The name the state travels under; the successor rebuilds it with the
    /// ``LiveUpdateDeviceKind`` of that name.
    var liveUpdateName: String { get }
    /// Stops the device's guest-visible activity, disarms what delivers into
    /// this VM, and returns its state with the descriptors that go along,
    /// borrowed: they stay this device's until `release()`.
    func freeze() throws(LiveUpdateError) -> FrozenDevice
    /// The hand-off failed after `freeze()`: re-arm and go on as before.
    func thaw()
    /// The successor has the device: let go of it without telling any peer
    /// (it must not notice), and never deliver into this VM again.
    func release()
}

/// A frozen device's state and the descriptors that travel with it (SCM_RIGHTS).
public struct FrozenDevice {
    /// The device's own encoding of its state.
    public var state: [UInt8]
    /// Descriptors the successor gets in this order, borrowed from the device.
    public var descriptors: [FileDescriptor]
    /// How many of them are interrupt routes' events (for the hand-off line).
    public var routes: Int
    /// How many are virtqueues' (kick) eventfds.
    public var queues: Int

    /// A frozen device from its parts.
    public init(state: [UInt8], descriptors: [FileDescriptor], routes: Int, queues: Int = 0) {
        self.state = state
        self.descriptors = descriptors
        self.routes = routes
        self.queues = queues
    }
}

/// How a successor rebuilds the devices of one name.
public struct LiveUpdateDeviceKind: Sendable {
    /// The name the device's state travels under.
    public var name: String
    /// Rebuilds the device in `vm` (made, not started) from `state`, owning
    /// `descriptors` (each closed by this call if it throws). It must not arm
    /// anything yet: the old VMM has not committed, and an armed route would
    /// consume signals the old VMM still needs if the hand-off fails.
    public var rebuild: Rebuild

    /// What rebuilds a device: the new VM (made, not started), the device's
    /// state, and the descriptors that came with it.
    public typealias Rebuild = @Sendable (TinyVM, [UInt8], [ReceivedDescriptor]) throws(LiveUpdateError) -> Rebuilt
    /// A device a ``Rebuild`` made.
    public typealias Rebuilt = any IncomingLiveUpdateDevice

    /// A kind from its parts.
    public init(name: String, rebuild: @escaping Rebuild) {
        self.name = name
        self.rebuild = rebuild
    }
}

/// A device rebuilt in the successor, not yet armed.
public protocol IncomingLiveUpdateDevice: AnyObject {
    /// Arms the device in the new VM (its routes adopt the old events and
    /// inject what latched) after the old VMM committed; called inside the
    /// VM partition's batch, so every route reaches the kernel in one push.
    func start() throws(LiveUpdateError)
    /// The device, for the next hand-off.
    var device: any LiveUpdateDevice { get }
    /// Route events and queue eventfds it adopted (for the hand-off line).
    var routes: Int { get }
    /// Queue eventfds it adopted.
    var queues: Int { get }
    /// vhost-user messages it sent while taking over (0 is the point).
    var vhostUserMessages: Int { get }
}

/// A descriptor that came over the socket: this object owns it and closes it
/// when released, unless `take()` handed it on.
public final class ReceivedDescriptor: @unchecked Sendable {
    // @unchecked: `descriptor` is only read and cleared by the one thread that
    // runs the hand-off; the object crosses no thread while it is owned.
    private var descriptor: FileDescriptor?

    /// Owns `descriptor`.
    public init(_ descriptor: FileDescriptor) { self.descriptor = descriptor }

    deinit { try? descriptor?.close() }

    /// The descriptor, borrowed (nil once taken).
    public var borrowed: FileDescriptor? { descriptor }

    /// Hands the descriptor to the caller, who then owns it. Traps if it was taken already.
    public func take() -> FileDescriptor {
        guard let taken = descriptor else { preconditionFailure("a received descriptor taken twice") }
        descriptor = nil
        return taken
    }
}

/// Why a live update failed, and where.
public enum LiveUpdateError: Error, CustomStringConvertible, Equatable {
    /// A socket call failed or its deadline passed, at `step`.
    case transport(step: String, reason: String)
    /// The peer broke the protocol at `step`.
    case protocolViolation(step: String, reason: String)
    /// The successor reads no state version this VMM writes.
    case unsupportedVersion(offered: ClosedRange<UInt32>, writes: UInt32)
    /// The VM could not be paused, saved or restored.
    case machine(String)
    /// A device could not be frozen, rebuilt or started.
    case device(name: String, reason: String)

    public var description: String {
        switch self {
        case .transport(let step, let reason): "\(step): \(reason)"
        case .protocolViolation(let step, let reason): "\(step): protocol violation: \(reason)"
        case .unsupportedVersion(let offered, let writes):
            "the successor reads state versions \(offered); this VMM writes \(writes)"
        case .machine(let why): "machine state: \(why)"
        case .device(let name, let reason): "device \(name): \(reason)"
        }
    }
}
#endif
