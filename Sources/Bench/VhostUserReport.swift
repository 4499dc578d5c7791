/// `irqfd bench --only vhost-user`: a virtio-blk request's path
/// through a vhost-user back-end, against its floor, in one run.
extension BenchReport {
    /// The vhost-user section: per back-end, request latency per delivery
    /// mode and the host-driven floor, throughput per queue depth, and (against
    /// qemu-storage-daemon) mask + unmask of a queue's vector, ours against
    /// QEMU's strategy. Every ratio is paired (interleaved rounds, median of
    /// the per-round ratios with its 95% bootstrap interval).
    public struct VhostUser: Codable, Equatable, Sendable {
        /// Results per back-end measured (`qemu-storage-daemon`, `embedded`).
        public var backends: [Backend]
        /// Raw irqfd delivery latency (the `raw` path of the delivery section:
        /// eventfd write from C -> guest handler ran), measured in this section's rounds.
        public var rawIrqfd: LatencySummary
        /// Mask + unmask of queue 0's vector against qemu-storage-daemon (nil when it is absent).
        public var maskUnmask: MaskUnmask?
        /// The targets for this section, checked in this run.
        public var targets: [TargetCheck]
        /// What was skipped, and why (e.g. qemu-storage-daemon not installed).
        public var skipped: [String]
        /// The guest's TSC rate (KVM_GET_TSC_KHZ on the VM), kHz: converts the guest's RDTSC stamps.
        public var tscKHz: Double
        /// Interleaved rounds behind each paired ratio.
        public var rounds: Int
        /// The paired ratio behind each target of `targets`, by target name.
        public var targetRatios: [NamedRatio] = []
        /// Guest TSC time / host CLOCK_MONOTONIC time of the throughput rounds
        /// (median; just under 1 when the guest's RDTSC runs at `tscKHz`: the
        /// host's span also holds the wake-up and its polling).
        public var tscCheck: Double = 0

        // `tsc_khz`: snake case of `tscKHz` would be `tsc_k_hz`.
        enum CodingKeys: String, CodingKey {
            case backends, rawIrqfd, maskUnmask, targets, skipped, rounds, targetRatios, tscCheck
            case tscKHz = "tscKhz"
        }

        /// The result for back-end `kind`, if measured.
        public func backend(_ kind: String) -> Backend? { backends.first { $0.backend == kind } }
    }

    /// One back-end's results.
    public struct VhostUserBackend: Codable, Equatable, Sendable {
        /// `qemu-storage-daemon` or `embedded`.
        public var backend: String
        /// Guest notify -> completion handler ran, one request in flight, per delivery mode.
        public var latency: [VhostUserLatency]
        /// The floor: the same back-end driven from the host (kick eventfd
        /// written, call eventfd waited on with poll(2)), one request in flight.
        public var floor: LatencySummary
        /// Requests per second per delivery mode and queue depth.
        public var throughput: [VhostUserThroughput]
        /// Paired ratios: `irqfd_over_userspace_p50`, `irqfd_over_userspace_p99`,
        /// `relay_over_userspace_p50`, and `irqfd_p50_over_budget` (irqfd p50 /
        /// (floor p50 + 1.2 × raw irqfd p50)), a figure only: the floor leaves
        /// out the guest's own instructions and notify write, so it is no target.
        public var ratios: [NamedRatio]

        /// The latency of delivery mode `mode`, if measured.
        public func latency(_ mode: String) -> VhostUserLatency? { latency.first { $0.mode == mode } }
        /// The paired ratio named `name`, if measured.
        public func ratio(_ name: String) -> PairedRatio? { ratios.first { $0.name == name }?.ratio }
    }

    /// A paired ratio with its name.
    public struct NamedRatio: Codable, Equatable, Sendable {
        /// What over what.
        public var name: String
        /// The ratio.
        public var ratio: PairedRatio
    }

    /// One delivery mode's request latency.
    public struct VhostUserLatency: Codable, Equatable, Sendable {
        /// `irqfd`, `relay` or `userspace` (`--delivery`).
        public var mode: String
        /// The percentiles (guest TSC stamps converted to µs).
        public var latency: LatencySummary
        /// Requests whose status byte was not 0 (expected 0).
        public var failed: Int
    }

    /// Requests per second at one queue depth.
    public struct VhostUserThroughput: Codable, Equatable, Sendable {
        /// Delivery mode.
        public var mode: String
        /// Requests kept in flight.
        public var depth: Int
        /// Median over the rounds of requests completed per second (guest TSC time).
        public var perSecond: Double
        /// Requests completed, all rounds.
        public var requests: Int
        /// This mode's rate over userspace's, paired by round (nil for userspace).
        public var overUserspace: PairedRatio?
    }

    /// Mask + unmask cycles run back to back, a block per side per round:
    /// µs per cycle (median over rounds) and the paired ratios.
    public struct VhostUserMaskBackToBack: Codable, Equatable, Sendable {
        /// Ours (MSI-X emulator), µs per cycle.
        public var oursUs: Double
        /// QEMU's strategy, µs per cycle.
        public var qemuStrategyUs: Double
        /// The C floor of ours, µs per cycle.
        public var rawUs: Double
        /// Ours / QEMU's.
        public var oursOverQemu: PairedRatio?
        /// QEMU's / ours.
        public var qemuOverOurs: PairedRatio?
        /// Ours / the C floor.
        public var oursOverRaw: PairedRatio?
    }

    /// Mask + unmask of queue 0's MSI-X vector, against qemu-storage-daemon.
    public struct VhostUserMaskUnmask: Codable, Equatable, Sendable {
        /// Ours: vector control's mask bit set then cleared through the MSI-X
        /// emulator (one KVM_IRQFD deassign + one assign, no vhost-user message),
        /// µs per cycle, isolated cycles (sides alternating cycle by cycle): the
        /// median over rounds of each round's median cycle.
        public var oursUs: Double
        /// QEMU's `vhost_virtqueue_mask`: SET_VRING_CALL to a masked notifier,
        /// then back to the call fd, each with REPLY_ACK, µs per cycle (as for ours).
        public var qemuStrategyUs: Double
        /// QEMU's strategy / ours, paired by round (cycles alternate sides within a round): how many times cheaper ours is.
        public var qemuOverOurs: PairedRatio
        /// Ours / QEMU's strategy, paired by round (the target: at most 1).
        public var oursOverQemu: PairedRatio?
        /// Ours: the mean cycle, every cycle (the scheduler's outliers included), µs.
        public var oursMeanUs: Double?
        /// QEMU's strategy: the mean cycle, µs.
        public var qemuStrategyMeanUs: Double?
        /// The C floor of ours (KVM_IRQFD deassign + assign from C on the same VM), µs per cycle, isolated.
        public var rawUs: Double?
        /// Ours / the C floor, isolated, paired by round.
        public var oursOverRaw: PairedRatio?
        /// The same three sides measured back to back (a block of cycles per side per round).
        public var backToBack: VhostUserMaskBackToBack?
        /// vhost-user messages per cycle, ours (expected 0).
        public var oursMessagesPerCycle: Double
        /// KVM_IRQFD calls per cycle, ours (expected 2).
        public var oursIrqfdCallsPerCycle: Double
        /// vhost-user messages per cycle, QEMU's strategy (2).
        public var qemuMessagesPerCycle: Double
        /// Whether REPLY_ACK was negotiated (each message waited for its ack).
        public var replyAck: Bool
        /// Cycles measured, each side.
        public var cycles: Int
    }
}

extension BenchReport.VhostUser {
    /// One back-end's results (`BenchReport.VhostUserBackend`).
    public typealias Backend = BenchReport.VhostUserBackend
    /// Mask + unmask (`BenchReport.VhostUserMaskUnmask`).
    public typealias MaskUnmask = BenchReport.VhostUserMaskUnmask
}
