#if os(Linux)
import IrqFdCore
import KVMTestSupport

/// The backends the fault attacks run on, as test arguments.
enum FaultBackend: String, CaseIterable, Sendable, CustomStringConvertible {
    case kvm
    case relay

    var description: String { rawValue }

    /// This backend's fault target over `guest`'s VM.
    func target(_ guest: CountingGuest) throws(IrqFdError) -> any FaultTarget {
        switch self {
        case .kvm: KVMTarget(guest)
        case .relay: try RelayTarget(guest)
        }
    }
}

/// The attacks after a dry run that made `calls` (how many of each call):
/// `attack(call, index, label)` once for every call it made, in name order,
/// with the `index`-th of that call to be failed and `label` saying so.
/// Returns how many attacks ran.
func attackEachCall(
    _ calls: [String: Int], on target: any FaultTarget, _ scenario: String,
    _ attack: (_ call: String, _ index: Int, _ label: String) throws -> Void
) rethrows -> Int {
    var attacks = 0
    for (call, count) in calls.sorted(by: { $0.key < $1.key }) {
        for index in 0..<count {
            attacks += 1
            try attack(call, index, "\(target.name): \(scenario), \(call) #\(index + 1) of \(count) failed")
        }
    }
    return attacks
}
#endif
