#if os(Linux)
package import IrqFdCore
package import KVM
package import SystemPackage
import Synchronization

// Test-only: this target is in no product, so a VMM that depends on
// swift-irqfd never links it; the package's tests import it.

extension VirtualMachine {
    /// This VM's fault injector: make chosen ioctls on this VM fail on purpose.
    /// Installed on first use; until then the VM's only cost is one relaxed
    /// atomic load per ioctl.
    package var faults: FaultInjector {
        // Only FaultInjector is ever installed (installFaultHook is package access).
        installFaultHook { FaultInjector() } as! FaultInjector
    }
}

/// Makes a chosen VM ioctl fail on purpose, so tests can check that every
/// operation leaves its state consistent when the kernel says no.
package final class FaultInjector: IoctlFaultHook {
    private let armed = Atomic<Bool>(false)
    private let plan = Mutex<Plan?>(nil)

    struct Plan {
        var call: String?
        var skip: Int
        var errno: Errno
        var remaining: Int
    }

    /// No faults until `failCall` is called.
    package init() {}

    /// Fails `count` calls named `call` (any call if nil) with `errno`, after
    /// letting `skip` matching calls through first.
    package func failCall(_ call: String? = nil, after skip: Int = 0, count: Int = 1, errno: Errno = .ioError) {
        plan.withLock { $0 = Plan(call: call, skip: skip, errno: errno, remaining: count) }
        armed.store(true, ordering: .releasing)
    }

    /// Stops injecting faults.
    package func clear() {
        plan.withLock { $0 = nil }
        armed.store(false, ordering: .releasing)
    }

    /// The error `call` must fail with now, if a fault is planned for it.
    package func fault(for call: StaticString) -> SystemCallError? {
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
#endif
