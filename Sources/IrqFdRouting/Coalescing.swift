public import IrqFdCore

extension RoutedIrqFd {
    /// Deferred (coalesced) commits (rule 8 of IrqFdCore's `TheTwelveRules` article).
    ///
    /// A route programmed with `setMsiDeferred`, or dropped, records its entry
    /// without pushing. While that entry is not in the kernel, the route's
    /// event is served by `interim` (a userspace relay: it watches the event
    /// and injects the message, e.g. with KVM_SIGNAL_MSI), so the guest gets
    /// every interrupt at once and none while masked. One push then carries
    /// every waiting entry, after which each served route stops being served
    /// and is armed, in GSI order (rule 9): on the committer's thread, or,
    /// after a push made at once in a caller, on `timer.soon` (see
    /// `reconcileCarried`). The bound: a waiting entry is
    /// pushed at most `delay` (plus the scheduler's latency) after the first
    /// change that made it wait, or at once when `threshold` entries wait, or
    /// as many as the kernel holds if that is more (so the kernel's total
    /// work to bring N entries live one at a time is O(N), see
    /// `RoutingTableState.commitsAtOnce`).
    ///
    /// A failed commit changes nothing in the kernel; its routes stay served,
    /// the error goes to `onCommitError` and the commit is retried after
    /// `delay`. A push made at once in a caller that fails is reported the same
    /// way, and no caller pushes at once again until a commit lands. An arm
    /// that fails after its entry reached the kernel leaves the route served,
    /// is reported, and is retried after `delay`: one retry per route, however
    /// many commits carried it.
    ///
    /// The invariant every operation keeps (`invariantViolations`): a route
    /// with an entry that is not masked is armed in the kernel or served by
    /// `interim`, never both; any other route is neither.
    public struct Coalescing: Sendable {
        /// Serves routes whose entries are not in the kernel yet.
        public var interim: any InterimDelivery
        /// Runs the committer after `delay`, and (`soon`) the arming of the
        /// routes a push made at once in a caller carried.
        public var timer: any CommitTimer
        /// The longest a waiting entry waits for its push.
        public var delay: Duration
        /// Waiting entries that make the push happen at once, in the caller (at
        /// least; once the kernel holds more entries than this, as many as it holds).
        public var threshold: Int
        /// Told about every coalesced commit that failed (no caller waits for it).
        public var onCommitError: @Sendable (IrqFdError) -> Void

        /// Coalescing over `interim`; by default a 2 ms bound and 512 entries.
        public init(
            interim: any InterimDelivery, timer: any CommitTimer = TaskCommitTimer(),
            delay: Duration = .milliseconds(2),
            threshold: Int = 512, onCommitError: @escaping @Sendable (IrqFdError) -> Void = { _ in }
        ) {
            self.interim = interim
            self.timer = timer
            self.delay = delay
            self.threshold = threshold
            self.onCommitError = onCommitError
        }
    }

    /// The routes a push made at once in a caller's thread carried (the
    /// threshold was crossed, see `Coalescing`), or that a push made for one
    /// caller carried for others: on a coalescing partition they are armed
    /// on the timer's thread, so the caller (a guest's MMIO write) pays the
    /// push but not a KVM_IRQFD and an interim stop per route, and no error of
    /// theirs reaches it, or runs a report under its lock. Until that runs,
    /// each stays served: its signals are delivered by the interim, none are
    /// lost, and a route masked meanwhile is left unarmed by its reconcile.
    /// Called with no lock held.
    func reconcileCarried(_ routes: [WeakRouteReference]) {
        guard !routes.isEmpty else { return }
        if let coalescing {
            coalescing.timer.soon { [self] in reconcileUnwaited(routes) }
        } else {
            reconcileUnwaited(routes)
        }
    }

    /// Brings in line routes that no caller waits for: the other routes a
    /// push carried (a coalesced commit, or a caller's push that carried
    /// waiting entries). Called with no lock held.
    ///
    /// On a coalescing partition an arm that fails is handled like a failed
    /// commit: the route stays served (its reconcile serves it again), the
    /// error is reported, and its arm is retried (`retryLater`) until it
    /// arms, is masked or goes. Without this, such a route would be served by
    /// the relay for good and nobody would hear why.
    /// Rule 12: once the partition is gone, nothing is retried or reported.
    func reconcileUnwaited(_ routes: [WeakRouteReference]) {
        var failed: [WeakRouteReference] = []
        var firstError: IrqFdError?
        for reference in routes {
            guard let object = reference.route else { continue }
            let route = unsafeDowncast(object, to: RoutedIrqFdRoute<Kernel>.self)
            do throws(IrqFdError) { try route.reconcile() } catch {
                if case .partitionGone = error { return }
                failed.append(reference)
                firstError = firstError ?? error
            }
        }
        guard let firstError, coalescing != nil else { return }
        report(firstError)
        retryLater(failed)
    }

    /// Tells `onCommitError` about `error` on the timer's thread: never on a
    /// caller's, which may hold a lock the reporter takes.
    func report(_ error: IrqFdError) {
        guard let coalescing else { return }
        if case .partitionGone = error { return }
        let onCommitError = coalescing.onCommitError
        coalescing.timer.soon { onCommitError(error) }
    }

    /// Retries the arms of `routes` after `delay`: each route is listed once
    /// (by GSI), and one retry serves every listed route, so a route carried
    /// by many commits still has one retry and one report per delay.
    func retryLater(_ routes: [WeakRouteReference]) {
        guard let coalescing else { return }
        // Each GSI read outside the table lock: the strong reference made here
        // must not be the last one while the lock is held (a route's deinit takes it).
        let keyed = routes.compactMap { reference -> (UInt32, WeakRouteReference)? in
            guard let object = reference.route else { return nil }
            return (unsafeDowncast(object, to: RoutedIrqFdRoute<Kernel>.self).gsi, reference)
        }
        guard !keyed.isEmpty else { return }
        let schedule = table.withLock { t -> Bool in
            for (gsi, reference) in keyed { t.retries[gsi] = reference }
            guard !t.retryScheduled else { return false }
            t.retryScheduled = true
            return true
        }
        if schedule {
            coalescing.timer.after(coalescing.delay) { [weak self] in self?.retryArms() }
        }
    }

    /// Runs the retry that `retryLater` scheduled, in GSI order.
    private func retryArms() {
        let routes = table.withLock { t -> [WeakRouteReference] in
            t.retryScheduled = false
            defer { t.retries.removeAll() }
            return t.retries.keys.sorted().compactMap { t.retries[$0] }
        }
        reconcileUnwaited(routes)
    }

    /// Routes whose arm is waiting for a retry.
    package var pendingRetryCount: Int { table.withLock { $0.retries.count } }

    /// Pushes what waits, at once, in the caller, if the threshold says so
    /// and no commit has failed since the last one landed (else the scheduled
    /// commit retries: a guest writing past the threshold while pushes fail
    /// makes no push per write). Returns the other routes the push carried,
    /// and its error, to report once the table lock is released. Table lock held.
    func pushIfDue(
        _ t: inout TableState, _ coalescing: Coalescing, except gsi: UInt32
    ) -> (others: [WeakRouteReference], error: IrqFdError?) {
        guard t.commitError == nil, t.commitsAtOnce(coalescing) else { return ([], nil) }
        do throws(IrqFdError) {
            let carried = try push(&t, batch: 0, owned: [])
            return (t.routes(at: carried, except: gsi), nil)
        } catch {
            t.commitError = error
            if case .partitionGone = error { return ([], nil) }
            return ([], error)
        }
    }

    /// Records `message` for `gsi` without pushing: it joins the next coalesced
    /// commit (made at once, here, when `threshold` entries wait). Returns the
    /// previous entry, whether the new one is live, and the other routes a
    /// push made here carried.
    func setEntryDeferred(
        _ gsi: UInt32, to message: MsiMessage?, coalescing: Coalescing
    ) -> EntryChange {
        var schedule = false
        var failure: IrqFdError?
        let result = table.withLock { (t: inout TableState) -> EntryChange in
            let previous = t.slots[Int(gsi)].desired
            var others: [WeakRouteReference] = []
            t.slots[Int(gsi)].steady = false
            if previous != message {
                t.setDesired(gsi, message, batch: nil)
                (others, failure) = pushIfDue(&t, coalescing, except: gsi)
                if !t.changed.isEmpty, !t.commitScheduled {
                    t.commitScheduled = true
                    schedule = true
                }
            }
            return (previous, t.isLive(gsi), others)
        }
        if let failure { report(failure) }
        if schedule { scheduleCommit(after: coalescing.delay) }
        return result
    }

    /// Runs `commitNow` after `delay`, on the coalescing timer.
    func scheduleCommit(after delay: Duration) {
        coalescing?.timer.after(delay) { [weak self] in self?.commitNow() }
    }

    /// Pushes every waiting (unowned) change now, then arms the routes it
    /// carried. A failure is reported (on the timer's thread) and retried
    /// later; the routes stay served meanwhile. Returns the push's error, if any.
    @discardableResult
    public func commitNow() -> IrqFdError? {
        let (carried, error) = table.withLock { (t: inout TableState) -> ([WeakRouteReference], IrqFdError?) in
            t.commitScheduled = false
            guard !t.changed.isEmpty else {
                t.commitError = nil
                return ([], nil)
            }
            do throws(IrqFdError) {
                let carried = try push(&t, batch: 0, owned: [])
                t.commitError = nil
                return (t.routes(at: carried), nil)
            } catch {
                t.commitError = error
                // Rule 12: once the partition is gone there is nothing to commit to and
                // no one to tell (the bench saw a warning logged after every VM's stop).
                if case .partitionGone = error { return ([], nil) }
                if coalescing != nil { t.commitScheduled = true }
                return ([], error)
            }
        }
        if let error, let coalescing {
            report(error)
            scheduleCommit(after: coalescing.delay)
        }
        reconcileUnwaited(carried)
        return error
    }

    /// The last coalesced commit's error, until a commit succeeds.
    public var lastCommitError: IrqFdError? { table.withLock { $0.commitError } }
}
