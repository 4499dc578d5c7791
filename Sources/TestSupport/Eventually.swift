#if os(Linux)
import Foundation
public import Testing

/// Whether this machine has /dev/kvm.
public let kvmPresent = FileManager.default.fileExists(atPath: "/dev/kvm")

/// Runs a test whenever /dev/kvm exists; otherwise skips it, saying why.
public let needsKVM = Testing.ConditionTrait.enabled(if: kvmPresent, "skipped: /dev/kvm is not present on this machine")

/// Polls `condition` every millisecond until it holds or `timeout` passes.
public func eventually(_ timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { return false }
        usleep(1000)
    }
    return true
}
#endif
