import IrqFdCore
import IrqFdRouting
import Synchronization
import Testing

/// An interim delivery that records which events it serves and with which
/// message. Like `RecordingKernel`, it stands in only for the routing core's
/// bookkeeping; delivery itself is checked with the relay on real KVM.
final class RecordingInterim: InterimDelivery {
    /// One served event's interim route.
    final class Served: IrqFdRoute {
        let event: any Event
        let message = Mutex<MsiMessage?>(nil)
        init(_ event: any Event) { self.event = event }
        func setMsi(address: UInt64, data: UInt32) throws(IrqFdError) {
            message.withLock { $0 = MsiMessage(address: address, data: data) }
        }
        func clearMsi() throws(IrqFdError) { message.withLock { $0 = nil } }
        func mask() throws(IrqFdError) {}
        func unmask() throws(IrqFdError) {}
    }

    private let served = Mutex<[ObjectIdentifier: Served]>([:])

    func serve(_ event: any Event) throws(IrqFdError) -> any IrqFdRoute {
        let route = Served(event)
        served.withLock { $0[ObjectIdentifier(event as AnyObject)] = route }
        return route
    }

    /// The message the interim delivers for `event` now (nil: not served).
    func message(for event: any Event) -> MsiMessage? {
        served.withLock { $0[ObjectIdentifier(event as AnyObject)] }?.message.withLock { $0 }
    }
}

/// A commit timer whose work runs only when the test says so; it tells the
/// work handed to `soon` (delay zero) from the work handed to `after`.
final class HeldTimer: CommitTimer {
    private let held = Mutex<[(delay: Duration, work: @Sendable () -> Void)]>([])
    func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) { held.withLock { $0.append((delay, work)) } }
    /// Runs (and forgets) everything held so far; returns how many ran.
    @discardableResult
    func runHeld() -> Int {
        let work = held.withLock { h in
            defer { h = [] }
            return h
        }
        for w in work { w.work() }
        return work.count
    }
    /// Work held for later (`after` with a delay), not `soon`.
    var delayedCount: Int { held.withLock { $0.filter { $0.delay > .zero }.count } }
}

/// Errors a partition reported, and whether any was reported while a caller's call was running.
final class ReportLog: Sendable {
    let errors = Mutex<[IrqFdError]>([])
    let duringCall = Atomic<Bool>(false)
    let reportedDuringCall = Atomic<Int>(0)
    var count: Int { errors.withLock { $0.count } }

    func report(_ error: IrqFdError) {
        if duringCall.load(ordering: .relaxed) { reportedDuringCall.add(1, ordering: .relaxed) }
        errors.withLock { $0.append(error) }
    }

    /// Runs `body` as a caller holding its own lock would: a report made meanwhile is counted.
    func inCall<T>(_ body: () throws(IrqFdError) -> T) throws(IrqFdError) -> T {
        duringCall.store(true, ordering: .relaxed)
        defer { duringCall.store(false, ordering: .relaxed) }
        return try body()
    }
}

/// A coalescing partition over a recording kernel, interim and held timer.
struct CoalescingRig {
    let kernel: RecordingKernel
    let interim = RecordingInterim()
    let timer = HeldTimer()
    let log = ReportLog()
    let partition: RoutedIrqFd<RecordingKernel>

    init(threshold: Int = 512, kernel: RecordingKernel = RecordingKernel()) {
        self.kernel = kernel
        let log = self.log
        partition = RoutedIrqFd(
            kernel: kernel,
            coalescing: .init(
                interim: interim, timer: timer, delay: .milliseconds(10), threshold: threshold,
                onCommitError: { log.report($0) }))
    }

    /// A new route of the partition given `message` deferred: outside a batch
    /// it is served by the interim at once, its entry waiting for the commit.
    func waitingRoute(_ message: MsiMessage) throws(IrqFdError) -> RoutedIrqFdRoute<RecordingKernel> {
        let route = try partition.newRoute()
        try route.setMsiDeferred(message)
        return route
    }

    /// A route whose deferred `message` waits and whose arm the kernel will
    /// refuse, and another route, the caller, whose push is to carry it.
    func refusedWaitingRouteAndCaller(
        _ message: MsiMessage
    ) throws(IrqFdError) -> (waiting: RoutedIrqFdRoute<RecordingKernel>, caller: RoutedIrqFdRoute<RecordingKernel>) {
        let waiting = try waitingRoute(message)
        let caller = try partition.newRoute()
        kernel.refuseAssign(waiting.gsi)
        return (waiting, caller)
    }

    /// Expects every route of the partition to keep the invariant.
    func expectInvariant(_ label: String = "", sourceLocation: SourceLocation = #_sourceLocation) {
        let violations = partition.invariantViolations()
        #expect(violations.isEmpty, "\(label): \(violations)", sourceLocation: sourceLocation)
    }
}
