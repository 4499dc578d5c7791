#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import MSIX
import PCI
import SystemPackage

// The PCI test device moving to a successor VMM: its configuration registers,
// SIGNALED and MSI-X function (table, control bits, PBA) travel as state; each
// routed vector's event travels as itself, so a device in a third process that
// holds it (`irqfd-device-helper`) signals the same event before, during and
// after the move, and what it signalled while no VM listened reaches the guest
// once.

extension MsixTestDevice: LiveUpdateDevice {
    /// The name the test device's state travels under.
    public static let liveUpdateName = "pci-test-device"

    /// The rebuilder a successor registers for the test device.
    public static let liveUpdateKind = LiveUpdateDeviceKind(name: liveUpdateName) {
        (vm, state, descriptors) throws(LiveUpdateError) in
        try IncomingTestDevice(vm: vm, state: state, descriptors: descriptors)
    }

    /// See ``LiveUpdateDevice/liveUpdateName``.
    public var liveUpdateName: String { Self.liveUpdateName }

    /// What crosses, besides the events: enough to make the same device.
    struct HandOff: Codable {
        var vectors: Int
        var delivery: String
        var state: State
        /// The vectors whose events follow as descriptors, in this order.
        var eventVectors: [Int]
    }

    /// Disarms every live vector's route (signals latch in its event), lets
    /// queued doorbells finish, and saves the device; the descriptors are the
    /// routed vectors' events.
    public func freeze() throws(LiveUpdateError) -> FrozenDevice {
        var disarmed: [any IrqFdRoute] = []
        for v in 0..<emulator.layout.vectorCount where emulator.isLive(v) {
            guard let route = emulator.route(v) else { continue }
            do throws(IrqFdError) { try route.mask() } catch {
                for route in disarmed { try? route.unmask() }
                throw .device(name: liveUpdateName, reason: "disarming vector \(v): \(error)")
            }
            disarmed.append(route)
        }
        disarmedForHandOff.withLock { $0 = disarmed }
        let state = save()
        let events = emulator.handOffEvents.sorted { $0.key < $1.key }
        var descriptors: [FileDescriptor] = []
        for (v, event) in events {
            guard let eventFD = event as? EventFD else {
                thaw()
                throw .device(name: liveUpdateName, reason: "vector \(v)'s event is not an eventfd")
            }
            descriptors.append(eventFD.fileDescriptor)
        }
        let handOff = HandOff(
            vectors: emulator.layout.vectorCount, delivery: delivery.rawValue, state: state,
            eventVectors: events.map(\.key))
        let bytes: Data
        do { bytes = try JSONEncoder().encode(handOff) } catch {
            thaw()
            throw .device(name: liveUpdateName, reason: "encoding: \(error)")
        }
        return FrozenDevice(state: Array(bytes), descriptors: descriptors, routes: descriptors.count)
    }

    /// Re-arms the routes `freeze()` disarmed: the kernel (or relay) injects
    /// what latched meanwhile.
    public func thaw() {
        let routes = disarmedForHandOff.withLock { routes in
            defer { routes = [] }
            return routes
        }
        for route in routes { try? route.unmask() }
    }

    /// Keeps the routes disarmed for good: the events are the successor's now.
    public func release() {
        disarmedForHandOff.withLock { $0 = [] }
    }
}

/// The test device rebuilt in a successor: made and plugged in at once, its
/// state and events applied by `start()`.
final class IncomingTestDevice: IncomingLiveUpdateDevice {
    let testDevice: MsixTestDevice
    let state: MsixTestDevice.State
    /// The adopted events, by vector; the emulator's routes take them in `start()`.
    let events: [Int: any Event]

    init(vm: TinyVM, state bytes: [UInt8], descriptors: [ReceivedDescriptor]) throws(LiveUpdateError) {
        let name = MsixTestDevice.liveUpdateName
        let handOff: MsixTestDevice.HandOff
        do { handOff = try JSONDecoder().decode(MsixTestDevice.HandOff.self, from: Data(bytes)) } catch {
            throw .device(name: name, reason: "undecodable state: \(error)")
        }
        guard let delivery = InterruptDelivery(rawValue: handOff.delivery) else {
            throw .device(name: name, reason: "unknown delivery \(handOff.delivery)")
        }
        guard handOff.eventVectors.count == descriptors.count,
            Set(handOff.eventVectors).count == descriptors.count,
            handOff.eventVectors.allSatisfy({ (0..<handOff.vectors).contains($0) })
        else {
            throw .device(
                name: name,
                reason: "\(descriptors.count) descriptors for event vectors \(handOff.eventVectors)")
        }
        var events: [Int: any Event] = [:]
        for (v, descriptor) in zip(handOff.eventVectors, descriptors) {
            do { events[v] = try EventFD.adopting(checking: descriptor.take()) } catch {
                throw .device(name: name, reason: "vector \(v)'s descriptor \(error)")
            }
        }
        do {
            testDevice = try MsixTestDevice.attach(to: vm, vectors: handOff.vectors, delivery: delivery)
        } catch { throw .device(name: name, reason: "\(error)") }
        state = handOff.state
        self.events = events
    }

    func start() throws(LiveUpdateError) {
        do { try testDevice.restore(state, adopting: events) } catch {
            throw .device(name: MsixTestDevice.liveUpdateName, reason: "restoring: \(error)")
        }
    }

    var device: any LiveUpdateDevice { testDevice }
    var routes: Int { events.count }
    var queues: Int { 0 }
    var vhostUserMessages: Int { 0 }
}
#endif
