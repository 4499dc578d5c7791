public import IrqFdCore

extension MsixEmulator {
    /// A coalesced (deferred) routing commit that may have carried this
    /// function's entries failed, and no caller waits for it: the
    /// VMM's partition reports it here, and it takes the emulator's error path
    /// for failed route calls (`counters.routeErrors`, `lastRouteError`).
    ///
    /// Nothing else changes: every vector whose entry the commit carried stays
    /// live and is served by the partition's interim delivery (the relay) until
    /// a retried commit lands, so no interrupt is lost or delivered while masked.
    public func reportCommitError(_ error: IrqFdError) {
        state.withLock { s in note(error, &s) }
    }
}
