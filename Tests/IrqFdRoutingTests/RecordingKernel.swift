import IrqFdCore
import IrqFdLinux
import IrqFdRouting
import Synchronization

/// A RoutingKernel that records every call and can refuse one on purpose.
/// It stands in for a kernel only where no kernel is involved (the routing
/// core's bookkeeping); everything it checks is also checked on real KVM.
final class RecordingKernel: RoutingKernel {
    enum Call: Equatable, CustomStringConvertible {
        case push([UInt32: MsiMessage])
        case assign(UInt32)
        case deassign(UInt32)
        var description: String {
            switch self {
            case .push(let t): "push(\(t.keys.sorted()))"
            case .assign(let g): "assign(\(g))"
            case .deassign(let g): "deassign(\(g))"
            }
        }
        var isPush: Bool { if case .push = self { true } else { false } }
    }

    let gsiLimit: UInt32
    let reservedGsis: Range<UInt32>
    let msiEntryCapacity: Int
    private struct State {
        var calls: [Call] = []
        var failNext: String?
        var table: [UInt32: MsiMessage] = [:]
        var armed: Set<UInt32> = []
        /// Calls refused every time, by name, until allowed again.
        var refused: Set<String> = []
        /// GSIs whose assign is refused every time.
        var refusedAssigns: Set<UInt32> = []
        /// Calls attempted, refused or not, by name.
        var attempts: [String: Int] = [:]
    }
    private let state = Mutex(State())

    init(gsiLimit: UInt32 = 64, reserved: Range<UInt32> = 0..<24, capacity: Int? = nil) {
        self.gsiLimit = gsiLimit
        self.reservedGsis = reserved
        self.msiEntryCapacity = capacity ?? Int(gsiLimit)
    }

    var calls: [Call] { state.withLock { $0.calls } }
    var table: [UInt32: MsiMessage] { state.withLock { $0.table } }
    var armed: Set<UInt32> { state.withLock { $0.armed } }
    func reset() { state.withLock { $0.calls = [] } }
    /// The next call named `name` ("push", "assign", "deassign") fails with EIO.
    func failNext(_ name: String) { state.withLock { $0.failNext = name } }
    /// Every call named `name` fails with EIO until `allow(name)`.
    func refuse(_ name: String) { _ = state.withLock { $0.refused.insert(name) } }
    /// Calls named `name` succeed again.
    func allow(_ name: String) { _ = state.withLock { $0.refused.remove(name) } }
    /// Every assign of `gsi` fails with EIO until `allowAssign(gsi)`.
    func refuseAssign(_ gsi: UInt32) { _ = state.withLock { $0.refusedAssigns.insert(gsi) } }
    /// Assigns of `gsi` succeed again.
    func allowAssign(_ gsi: UInt32) { _ = state.withLock { $0.refusedAssigns.remove(gsi) } }
    /// Calls named `name` attempted so far, refused or not.
    func attempts(_ name: String) -> Int { state.withLock { $0.attempts[name, default: 0] } }

    private func record(_ call: Call, name: String) throws(IrqFdError) {
        try state.withLock { (s) throws(IrqFdError) in
            s.attempts[name, default: 0] += 1
            if s.failNext == name {
                s.failNext = nil
                throw .call(name, .ioError)
            }
            if s.refused.contains(name) { throw .call(name, .ioError) }
            if case .assign(let gsi) = call, s.refusedAssigns.contains(gsi) { throw .call(name, .ioError) }
            s.calls.append(call)
            switch call {
            case .push(let t): s.table = t
            case .assign(let g): s.armed.insert(g)
            case .deassign(let g): s.armed.remove(g)
            }
        }
    }

    func pushRoutingTable(_ entries: [RoutingEntry]) throws(IrqFdError) {
        precondition(entries.map(\.gsi) == entries.map(\.gsi).sorted(), "pushed entries must be sorted")
        try record(.push(Dictionary(uniqueKeysWithValues: entries.map { ($0.gsi, $0.msi) })), name: "push")
    }
    func assign(event: any Event, gsi: UInt32) throws(IrqFdError) { try record(.assign(gsi), name: "assign") }
    func deassign(event: any Event, gsi: UInt32) throws(IrqFdError) { try record(.deassign(gsi), name: "deassign") }
    func makeEvent() throws(IrqFdError) -> any Event { try EventFD() }
}
