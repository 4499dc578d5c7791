import IrqFdCore
public import SystemPackage
import Synchronization

/// Makes a chosen VM ioctl fail on purpose, so tests can check that every
/// operation leaves its state consistent when the kernel says no.
///
/// Off by default; when off it costs one relaxed atomic load per ioctl.
public final class FaultInjector: Sendable {
    private let armed = Atomic<Bool>(false)
    private let plan = Mutex<Plan?>(nil)

    struct Plan {
        var call: String?
        var skip: Int
        var errno: Errno
        var remaining: Int
    }

    /// No faults until `failCall` is called.
    public init() {}

    /// Fails `count` calls named `call` (any call if nil) with `errno`, after
    /// letting `skip` matching calls through first.
    public func failCall(_ call: String? = nil, after skip: Int = 0, count: Int = 1, errno: Errno = .ioError) {
        plan.withLock { $0 = Plan(call: call, skip: skip, errno: errno, remaining: count) }
        armed.store(true, ordering: .releasing)
    }

    /// Stops injecting faults.
    public func clear() {
        plan.withLock { $0 = nil }
        armed.store(false, ordering: .releasing)
    }

    /// The error `call` must fail with now, if a fault is planned for it.
    func fault(for call: StaticString) -> SystemCallError? {
        guard armed.load(ordering: .acquiring) else { return nil }
        return plan.withLock { plan -> SystemCallError? in
            guard var p = plan else { return nil }
            if let name = p.call, name != "\(call)" { return nil }
            if p.skip > 0 {
                p.skip -= 1
                plan = p
                return nil
            }
            p.remaining -= 1
            plan = p.remaining > 0 ? p : nil
            if p.remaining <= 0 { armed.store(false, ordering: .releasing) }
            return SystemCallError(call: "\(call)", errno: p.errno)
        }
    }
}

/// How many of each interrupt-related ioctl a VM has made; tests use these to
/// prove which operations make system calls and which do not.
public final class IoctlCounters: Sendable {
    let routingPushes = Atomic<Int>(0)
    let irqfdAssigns = Atomic<Int>(0)
    let irqfdDeassigns = Atomic<Int>(0)
    let signalMsis = Atomic<Int>(0)
    let ioeventfdAssigns = Atomic<Int>(0)
    let ioeventfdDeassigns = Atomic<Int>(0)
    let total = Atomic<Int>(0)

    /// All zero.
    public init() {}

    /// A snapshot of the counters.
    public var snapshot: Snapshot {
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
    public struct Snapshot: Equatable, Sendable, CustomStringConvertible {
        /// KVM_SET_GSI_ROUTING calls.
        public var routingPushes: Int
        /// KVM_IRQFD calls that assigned.
        public var irqfdAssigns: Int
        /// KVM_IRQFD calls that deassigned.
        public var irqfdDeassigns: Int
        /// KVM_SIGNAL_MSI calls.
        public var signalMsis: Int
        /// KVM_IOEVENTFD calls that assigned.
        public var ioeventfdAssigns: Int = 0
        /// KVM_IOEVENTFD calls that deassigned.
        public var ioeventfdDeassigns: Int = 0
        /// Every VM ioctl.
        public var total: Int

        /// The calls made between `earlier` and this snapshot.
        public static func - (later: Snapshot, earlier: Snapshot) -> Snapshot {
            Snapshot(
                routingPushes: later.routingPushes - earlier.routingPushes,
                irqfdAssigns: later.irqfdAssigns - earlier.irqfdAssigns,
                irqfdDeassigns: later.irqfdDeassigns - earlier.irqfdDeassigns,
                signalMsis: later.signalMsis - earlier.signalMsis,
                ioeventfdAssigns: later.ioeventfdAssigns - earlier.ioeventfdAssigns,
                ioeventfdDeassigns: later.ioeventfdDeassigns - earlier.ioeventfdDeassigns,
                total: later.total - earlier.total)
        }

        public var description: String {
            "pushes \(routingPushes), assigns \(irqfdAssigns), deassigns \(irqfdDeassigns), signal-MSIs \(signalMsis), ioeventfd assigns \(ioeventfdAssigns), deassigns \(ioeventfdDeassigns), total \(total)"
        }
    }
}
