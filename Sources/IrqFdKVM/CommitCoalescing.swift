#if os(Linux)
public import IrqFdCore
public import IrqFdRelay
public import IrqFdRouting
public import KVM
import Logging
public import MSIX
import Synchronization

// The glue a VMM needs around a coalescing KVM partition (`RoutedIrqFd.Coalescing`):
// the interim relay that serves waiting entries, and where failed commits are reported.

/// The relay that serves the VM partition's waiting entries (see
/// `RoutedIrqFd.Coalescing`), made on first need: a VM whose devices never
/// defer a commit never starts a relay thread.
///
/// Each served route is a relay route adopting the irqfd route's event; the
/// relay injects with KVM_SIGNAL_MSI until the push carrying the entry lands.
///
/// Like the KVM backend, it holds the VM weakly (so does the relay's
/// KVM_SIGNAL_MSI injector): routes must not keep a VM alive.
public final class LazyRelayInterim: InterimDelivery {
    private let injector: KVMSignalMsiInjector
    private let relay = Mutex<RelayIrqFd?>(nil)

    /// Serves routes of partitions on `vm`.
    public init(vm: VirtualMachine) { injector = KVMSignalMsiInjector(vm: vm) }

    /// See `InterimDelivery.serve(_:)`: the relay is started the first time.
    public func serve(_ event: any Event) throws(IrqFdError) -> any IrqFdRoute {
        try relay.withLock { (r: inout RelayIrqFd?) throws(IrqFdError) -> any IrqFdRoute in
            if let r { return r.newRoute(adopting: event) }
            let made = try RelayIrqFd(injector: injector)
            r = made
            return made.newRoute(adopting: event)
        }
    }

    /// The relay, once something was served (its statistics say how many
    /// signals it injected while entries waited).
    public var relayIfStarted: RelayIrqFd? { relay.withLock { $0 } }
}

/// Where the failures of a VM partition's coalesced commits go (no caller
/// waits for those, see `RoutedIrqFd.Coalescing`): to every registered
/// listener (each PCI device's MSI-X emulator, whose error path is
/// `MsixEmulator.lastRouteError` and `counters.routeErrors`) and to the log,
/// at most one line a second (a guest can make commits fail again and again,
/// so the log is rate-limited; the lines it skipped are counted in the next).
///
/// The routes stay served by the relay meanwhile, and the partition retries
/// the commit after its delay: nothing is lost, only later in the kernel.
/// The partition calls `report(_:)` on its timer's thread, never under a
/// caller's lock, so a listener may take its emulator's lock.
///
/// Wire it as the partition's `onCommitError` (`{ reporter.report($0) }`)
/// and register each device's emulator with `add(_:)`.
public final class CommitErrorReporter: Sendable {
    private struct Listener {
        weak var owner: AnyObject?
        let report: @Sendable (IrqFdError) -> Void
    }

    /// `@unchecked Sendable`: the weak reference is only read under `listeners`' lock.
    private struct Listeners: @unchecked Sendable {
        var all: [Listener] = []
    }

    private let listeners = Mutex(Listeners())
    private let limiter = Mutex<(last: ContinuousClock.Instant?, skipped: Int)>((nil, 0))
    private let reported = Atomic<Int>(0)
    private let logger = Logger(label: "swift-irqfd.kvm.commit")

    /// A reporter with no listeners.
    public init() {}

    /// Tells `report` about every failed commit for as long as `owner` lives.
    public func add(owner: AnyObject, _ report: @escaping @Sendable (IrqFdError) -> Void) {
        listeners.withLock { l in
            l.all.removeAll { $0.owner == nil }
            l.all.append(Listener(owner: owner, report: report))
        }
    }

    /// Tells `emulator`'s error path (`MsixEmulator.reportCommitError(_:)`)
    /// about every failed commit for as long as the emulator lives.
    public func add(_ emulator: MsixEmulator) {
        add(owner: emulator) { [weak emulator] in emulator?.reportCommitError($0) }
    }

    /// Failed commits reported so far.
    public var count: Int { reported.load(ordering: .relaxed) }

    /// Reports `error` (called by the partition, with no lock held).
    public func report(_ error: IrqFdError) {
        reported.add(1, ordering: .relaxed)
        let targets = listeners.withLock { l in l.all.filter { $0.owner != nil }.map(\.report) }
        for report in targets { report(error) }
        let now = ContinuousClock.now
        let skipped = limiter.withLock { s -> Int? in
            if let last = s.last, now - last < .seconds(1) {
                s.skipped += 1
                return nil
            }
            defer { s = (now, 0) }
            return s.skipped
        }
        if let skipped {
            logger.warning(
                "a coalesced routing commit failed; its vectors stay relay-served and it is retried",
                metadata: ["error": "\(error)", "skipped": "\(skipped)"])
        }
    }
}
#endif
