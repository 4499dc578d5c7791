import Synchronization

/// How many of each interrupt-related ioctl a VM has made; tests use these to
/// prove which operations make system calls and which do not. A test and
/// measurement seam (`package`), not API.
package final class IoctlCounters: Sendable {
    let routingPushes = Atomic<Int>(0)
    let irqfdAssigns = Atomic<Int>(0)
    let irqfdDeassigns = Atomic<Int>(0)
    let signalMsis = Atomic<Int>(0)
    let ioeventfdAssigns = Atomic<Int>(0)
    let ioeventfdDeassigns = Atomic<Int>(0)
    let total = Atomic<Int>(0)

    /// All zero.
    package init() {}

    /// A snapshot of the counters.
    package var snapshot: Snapshot {
        Snapshot(
            routingPushes: routingPushes.load(ordering: .relaxed),
            irqfdAssigns: irqfdAssigns.load(ordering: .relaxed),
            irqfdDeassigns: irqfdDeassigns.load(ordering: .relaxed),
            signalMsis: signalMsis.load(ordering: .relaxed),
            ioeventfdAssigns: ioeventfdAssigns.load(ordering: .relaxed),
            ioeventfdDeassigns: ioeventfdDeassigns.load(ordering: .relaxed),
            total: total.load(ordering: .relaxed))
    }

    /// Counter values at one moment; subtract two to see what happened between.
    package struct Snapshot: Equatable, Sendable, CustomStringConvertible {
        /// KVM_SET_GSI_ROUTING calls.
        package var routingPushes: Int
        /// KVM_IRQFD calls that assigned.
        package var irqfdAssigns: Int
        /// KVM_IRQFD calls that deassigned.
        package var irqfdDeassigns: Int
        /// KVM_SIGNAL_MSI calls.
        package var signalMsis: Int
        /// KVM_IOEVENTFD calls that assigned.
        package var ioeventfdAssigns: Int = 0
        /// KVM_IOEVENTFD calls that deassigned.
        package var ioeventfdDeassigns: Int = 0
        /// Every VM ioctl.
        package var total: Int

        /// The calls made between `earlier` and this snapshot.
        package static func - (later: Snapshot, earlier: Snapshot) -> Snapshot {
            Snapshot(
                routingPushes: later.routingPushes - earlier.routingPushes,
                irqfdAssigns: later.irqfdAssigns - earlier.irqfdAssigns,
                irqfdDeassigns: later.irqfdDeassigns - earlier.irqfdDeassigns,
                signalMsis: later.signalMsis - earlier.signalMsis,
                ioeventfdAssigns: later.ioeventfdAssigns - earlier.ioeventfdAssigns,
                ioeventfdDeassigns: later.ioeventfdDeassigns - earlier.ioeventfdDeassigns,
                total: later.total - earlier.total)
        }

        package var description: String {
            "pushes \(routingPushes), assigns \(irqfdAssigns), deassigns \(irqfdDeassigns), signal-MSIs \(signalMsis), ioeventfd assigns \(ioeventfdAssigns), deassigns \(ioeventfdDeassigns), total \(total)"
        }
    }
}
