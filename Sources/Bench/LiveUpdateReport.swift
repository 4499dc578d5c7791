/// `irqfd bench --only live-update`: a running guest handed to a new VM over
/// the same RAM, against a C floor doing only the KVM part, in one run.
extension BenchReport {
    /// The live-update section. Each round moves two guests once each, in
    /// alternating order: one by the library (TinyVM's hand-off: pause the
    /// vCPUs, disarm the routes, save vCPU state and the VM clock, restore it
    /// into a VM made beforehand, adopt the routes' events in one batch, start)
    /// and one by the C floor (stop the vCPU thread, disarm, KVM_GET/SET of
    /// regs, sregs, LAPIC, vCPU events and the APIC base, one routing push,
    /// arm the same eventfd, start a thread). A device thread per guest signals
    /// its route throughout, each signal waiting for the guest's handler.
    public struct LiveUpdate: Codable, Equatable, Sendable {
        /// Hand-offs per side.
        public var rounds: Int
        /// Routes handed over per hand-off (per side).
        public var routes: Int
        /// The library's pause: last vCPU stopped in the old VM -> first vCPU
        /// about to run in the new one.
        public var pause: LatencySummary
        /// The library's whole hand-off: pause request -> first vCPU about to run.
        public var handOff: LatencySummary
        /// The floor's pause, measured the same way.
        public var floorPause: LatencySummary
        /// The floor's whole hand-off.
        public var floorHandOff: LatencySummary
        /// Library pause / floor pause, paired by round.
        public var pauseRatio: PairedRatio?
        /// Signals the device threads sent, and how many never reached a handler.
        public var signals: Int
        /// Signals whose interrupt the guest did not take within 10 s.
        public var lost: Int
        /// The targets for this section, checked in this run.
        public var targets: [TargetCheck]
        /// Whether the library's hand-offs went between processes (the
        /// successor a separate `irqfd run --incoming`); absent in older reports.
        public var crossProcess: Bool?
        /// The library's pause taken apart, step by step in the order they run.
        public var pauseSteps: [Step]?

        /// One step of the pause and what it took across the hand-offs.
        public struct Step: Codable, Equatable, Sendable {
            /// The step ("disarm", "encode + send", "commit -> successor", ...).
            public var name: String
            /// What it took.
            public var time: LatencySummary
        }
    }
}
