#if os(Linux)
import Foundation
public import IrqFdCore
import IrqFdKVM
public import IrqFdRelay
public import IrqFdRouting
public import KVM
import Logging
import Synchronization

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

/// Where the failures of the VM partition's coalesced commits go (no caller
/// waits for those: DESIGN.md rule 8, issue 11): to every registered listener
/// (each PCI device's MSI-X emulator, whose error path is
/// `MsixEmulator.lastRouteError` and `counters.routeErrors`) and to the log,
/// at most one line a second (a guest can make commits fail again and again,
/// so the log is rate-limited; the lines it skipped are counted in the next).
///
/// The routes stay served by the relay meanwhile, and the partition retries
/// the commit after its delay: nothing is lost, only later in the kernel.
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
    private let logger = Logger(label: "swift-irqfd.tinyvm.commit")

    /// A reporter with no listeners.
    public init() {}

    /// Tells `report` about every failed commit for as long as `owner` lives.
    public func add(owner: AnyObject, _ report: @escaping @Sendable (IrqFdError) -> Void) {
        listeners.withLock { l in
            l.all.removeAll { $0.owner == nil }
            l.all.append(Listener(owner: owner, report: report))
        }
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

extension TinyVM {
    /// The coalescing settings of a TinyVM partition: the relay serves waiting
    /// entries; `timer` commits once the guest's MMIO has gone quiet for 4 ms,
    /// and at the latest 50 ms after the first change that made an entry
    /// wait; a push happens at once, in the guest's write, when 1024 entries
    /// wait; failures go to `reporter`.
    ///
    /// Why these: every push carries the whole table, so the number of pushes
    /// a bring-up makes is what its kernel work grows with. A guest unmasking
    /// 2048 vectors one write at a time keeps making MMIO exits for 50-150 ms
    /// on this machine (more under load): it is committed at the threshold, at
    /// the 50 ms bound (so a slower guest costs a push per 50 ms, not per 2),
    /// and once, 4 ms after its last write (a fixed 2 ms delay made about 20
    /// pushes; a fixed 25 ms one left the last vectors waiting up to 25 ms;
    /// 1 ms of quiet mistook a vCPU thread descheduled on a loaded host for a
    /// guest that had finished, and made 14).
    /// The relay delivers meanwhile, so a wait costs an interrupt no latency
    /// beyond the relay's.
    static func coalescing(vm: VirtualMachine, timer: QuietCommitTimer, reporter: CommitErrorReporter) -> KVMIrqFd.Coalescing {
        .init(
            interim: LazyRelayInterim(vm: vm), timer: timer, delay: .milliseconds(50), threshold: 1024,
            onCommitError: { reporter.report($0) })
    }
}

/// The TinyVM partition's commit timer: a scheduled commit runs once the
/// guest has made no MMIO exit for `quiet` (its burst of table writes is
/// over), or when the partition's delay has passed, whichever comes first.
/// Each scheduled commit gets a thread of its own that samples the VM's
/// `mmioExits` every quarter of `quiet`; it never waits on a shared pool.
public final class QuietCommitTimer: CommitTimer {
    /// How long the guest's MMIO must stay quiet before a commit.
    public let quiet: Duration
    private let vm = Mutex<WeakVM>(WeakVM())

    /// `@unchecked Sendable`: the weak reference is only touched under `vm`'s lock.
    private struct WeakVM: @unchecked Sendable {
        weak var vm: TinyVM?
    }

    /// A timer not yet watching a VM (it then waits the whole delay).
    public init(quiet: Duration = .milliseconds(4)) { self.quiet = quiet }

    /// Watches `vm`'s MMIO exits (weakly).
    func watch(_ vm: TinyVM) { self.vm.withLock { $0.vm = vm } }

    private var exits: Int? { vm.withLock { $0.vm }?.mmioExits }

    /// See `CommitTimer.after(_:_:)`: `work` runs on a new thread within `delay`.
    public func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) {
        let thread = Thread { [self] in
            let deadline = ContinuousClock.now + delay
            // Sampled every quarter of `quiet`, so the commit lands between
            // `quiet` and 1.25 x `quiet` after the guest's last exit (sampling
            // every `quiet` made that up to 2 x `quiet`).
            let step = quiet / 4
            var last = exits
            var quietSince = ContinuousClock.now
            while true {
                let now = ContinuousClock.now
                let left = now.duration(to: deadline)
                if left <= .zero { break }
                Thread.sleep(forTimeInterval: Self.seconds(min(step, left)))
                let count = exits
                if count == nil { break }
                if count != last {
                    last = count
                    quietSince = ContinuousClock.now
                } else if quietSince.duration(to: .now) >= quiet {
                    break
                }
            }
            work()
        }
        thread.name = "commit timer"
        thread.stackSize = 1 << 18
        thread.start()
    }

    private static func seconds(_ d: Duration) -> TimeInterval {
        let (s, atto) = d.components
        return TimeInterval(s) + TimeInterval(atto) / 1e18
    }
}
#endif
