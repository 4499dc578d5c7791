import IrqFdCore
import Synchronization

/// An `IrqFd` that records every call the emulator makes, in order, and
/// delivers like a kernel irqfd would: a signal on an armed route (message
/// set, not masked) is delivered at once; otherwise it latches in the event's
/// counter, and arming a route with something latched delivers it once.
///
/// It stands in for a hypervisor only in these unit tests of the emulator's
/// bookkeeping; the same behaviour is checked on real KVM in TinyVMTests.
final class RecordingIrqFd: IrqFd {
    enum Call: Hashable, CustomStringConvertible {
        case newRoute(Int)
        case setMsi(Int, MsiMessage)
        case clearMsi(Int)
        case mask(Int)
        case unmask(Int)
        case consumePending(Int)
        case drop(Int)
        case beginBatch
        case endBatch

        var description: String {
            switch self {
            case .newRoute(let r): "new(\(r))"
            case .setMsi(let r, let m): "setMsi(\(r), 0x\(String(m.address, radix: 16))/0x\(String(m.data, radix: 16)))"
            case .clearMsi(let r): "clearMsi(\(r))"
            case .mask(let r): "mask(\(r))"
            case .unmask(let r): "unmask(\(r))"
            case .consumePending(let r): "consumePending(\(r))"
            case .drop(let r): "drop(\(r))"
            case .beginBatch: "begin"
            case .endBatch: "end"
            }
        }
    }

    struct Log {
        var calls: [Call] = []
        var delivered: [MsiMessage] = []
        var nextRoute = 0
        var live = 0
        var failNext: String?
    }

    let log = Mutex(Log())
    /// How many routes may exist at once (a GSI space).
    let capacity: Int

    init(capacity: Int = 4096) { self.capacity = capacity }

    var calls: [Call] { log.withLock { $0.calls } }
    var delivered: [MsiMessage] { log.withLock { $0.delivered } }
    /// Returns and forgets the calls and deliveries recorded so far.
    func take() -> (calls: [Call], delivered: [MsiMessage]) {
        log.withLock { l in
            defer {
                l.calls = []
                l.delivered = []
            }
            return (l.calls, l.delivered)
        }
    }
    /// The next call of this kind ("new", "setMsi", "mask", "unmask") fails with EIO.
    func failNext(_ name: String) { log.withLock { $0.failNext = name } }

    fileprivate func record(_ call: Call, name: String) throws(IrqFdError) {
        try log.withLock { (l: inout Log) throws(IrqFdError) in
            if l.failNext == name {
                l.failNext = nil
                throw .call("recorded \(name)", .ioError)
            }
            l.calls.append(call)
        }
    }

    func newIrqFdRoute() throws(IrqFdError) -> any IrqFdRoute {
        let id = try log.withLock { (l: inout Log) throws(IrqFdError) -> Int in
            if l.failNext == "new" {
                l.failNext = nil
                throw .call("recorded new", .ioError)
            }
            guard l.live < capacity else { throw .gsiExhausted(capacity: capacity) }
            l.live += 1
            defer { l.nextRoute += 1 }
            l.calls.append(.newRoute(l.nextRoute))
            return l.nextRoute
        }
        return RecordingRoute(id: id, partition: self)
    }

    func withBatch<Result>(_ body: () throws(IrqFdError) -> Result) throws(IrqFdError) -> Result {
        log.withLock { $0.calls.append(.beginBatch) }
        defer { log.withLock { $0.calls.append(.endBatch) } }
        return try body()
    }
}

/// Route state shared by a route and its event.
final class RecordingRouteCore: Sendable {
    struct State {
        var msi: MsiMessage?
        var masked = false
        var latched = 0
        var armed: Bool { msi != nil && !masked }
    }
    let state = Mutex(State())
    let partition: RecordingIrqFd
    init(partition: RecordingIrqFd) { self.partition = partition }

    /// Delivers what latched if the route is armed now (as KVM does when an
    /// irqfd is assigned with a nonzero counter: one injection).
    func flushIfArmed(_ s: inout State) {
        guard s.armed, s.latched > 0, let msi = s.msi else { return }
        s.latched = 0
        partition.log.withLock { $0.delivered.append(msi) }
    }
}

final class RecordingEvent: Event {
    let core: RecordingRouteCore
    init(core: RecordingRouteCore) { self.core = core }
    func signal() {
        core.state.withLock { s in
            s.latched += 1
            core.flushIfArmed(&s)
        }
    }
    func tryWait() -> Bool {
        core.state.withLock { s in
            defer { s.latched = 0 }
            return s.latched > 0
        }
    }
    func wait(timeout: Duration) -> Bool { tryWait() }
    var nativeHandle: NativeEventHandle { NativeEventHandle(rawValue: -1) }
}

final class RecordingRoute: IrqFdRoute {
    let id: Int
    let partition: RecordingIrqFd
    let core: RecordingRouteCore
    let recordingEvent: RecordingEvent
    var event: any Event { recordingEvent }

    init(id: Int, partition: RecordingIrqFd) {
        self.id = id
        self.partition = partition
        core = RecordingRouteCore(partition: partition)
        recordingEvent = RecordingEvent(core: core)
    }

    deinit {
        partition.log.withLock {
            $0.calls.append(.drop(id))
            $0.live -= 1
        }
    }

    func setMsi(address: UInt64, data: UInt32) throws(IrqFdError) {
        let message = MsiMessage(address: address, data: data)
        try partition.record(.setMsi(id, message), name: "setMsi")
        try core.state.withLock { (s: inout RecordingRouteCore.State) throws(IrqFdError) in
            guard message.isDeliverable else {
                s.msi = nil
                throw .undeliverableAddress(address)
            }
            s.msi = message
            core.flushIfArmed(&s)
        }
    }

    func clearMsi() throws(IrqFdError) {
        try partition.record(.clearMsi(id), name: "clearMsi")
        core.state.withLock { $0.msi = nil }
    }

    func mask() throws(IrqFdError) {
        try partition.record(.mask(id), name: "mask")
        core.state.withLock { $0.masked = true }
    }

    func unmask() throws(IrqFdError) {
        try partition.record(.unmask(id), name: "unmask")
        core.state.withLock { s in
            s.masked = false
            core.flushIfArmed(&s)
        }
    }

    func consumePending() -> Bool {
        try? partition.record(.consumePending(id), name: "consumePending")
        return recordingEvent.tryWait()
    }

    var isMasked: Bool { core.state.withLock { $0.masked } }
    var latched: Int { core.state.withLock { $0.latched } }
}

/// A userspace injector that records what it injected.
final class RecordingInjector: MsiInjector {
    let injected = Mutex<[MsiMessage]>([])
    let failing = Atomic<Bool>(false)
    func inject(_ message: MsiMessage) throws(IrqFdError) {
        if failing.load(ordering: .relaxed) { throw .call("recorded inject", .ioError) }
        injected.withLock { $0.append(message) }
    }
    func take() -> [MsiMessage] {
        injected.withLock { i in
            defer { i = [] }
            return i
        }
    }
}
