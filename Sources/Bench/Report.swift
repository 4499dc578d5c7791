public import Foundation

/// Everything one `irqfd bench` run measured, in the shape `--json` writes.
///
/// All times in one report come from the same run, so its ratios compare
/// like with like even when the machine's absolute speed drifts.
public struct BenchReport: Codable, Equatable, Sendable {
    /// Where and how the run was made.
    public var machine: Machine
    /// Delivery latency per path (`irqfd`, `relay`, `userspace`, and the
    /// floors `raw`, `raw_relay`, `raw_signal_msi`).
    public var delivery: [Delivery]
    /// Interrupts per second per path, through one vector and through eight.
    public var throughput: [Throughput]
    /// Back-to-back signals per path and how many coalesced.
    public var bursts: [Burst]
    /// Route programming per N.
    public var programming: [Programming]
    /// Mask + unmask cycles against raw KVM_IRQFD deassign + assign (nil if not measured).
    public var maskUnmask: MaskUnmask?
    /// Route creation and release rates and memory per live route (nil if not measured).
    public var lifecycle: Lifecycle?
    /// Bringing an MSI-X function's vectors live, Linux's order against one function-mask batch.
    public var msixBringUp: [MsixBringUp]?
    /// virtio-blk over vhost-user (nil if not measured).
    public var vhostUser: VhostUser?
    /// virtio-net over vhost-user on dpdk-testpmd (nil if not measured).
    public var virtioNet: VirtioNet?
    /// The first interrupt after each vector goes live, from the guest's unmask write to its handler.
    public var firstInterrupt: [FirstInterrupt]?
    /// A running guest handed to a new VM, against the C floor (nil if not measured).
    public var liveUpdate: LiveUpdate?
    /// The performance targets (the Benchmark article's "Targets"), checked against this run's ratios.
    public var targets: [TargetCheck] = []
    /// What this run could not measure, and why.
    public var gaps: [String] = []

    /// The machine and the run's settings.
    public struct Machine: Codable, Equatable, Sendable {
        /// uname -r.
        public var kernel: String
        /// Online CPUs.
        public var cpus: Int
        /// KVM_GET_API_VERSION.
        public var kvmApiVersion: Int
        /// KVM_CAP_IRQ_ROUTING: the GSI space and the table's entry limit.
        public var gsiLimit: Int
        /// MSI routes that can be live at once (the library's `gsiCapacity`).
        public var gsiCapacity: Int
        /// Latency samples per path asked for.
        public var samplesPerPath: Int
        /// Whether this was a `--quick` run.
        public var quick: Bool
        /// Wall-clock seconds the run took.
        public var seconds: Double
        /// When the run started (ISO 8601).
        public var date: String
    }

    /// One path's delivery latency: device signal -> guest handler ran.
    public struct Delivery: Codable, Equatable, Sendable {
        /// The path's name.
        public var path: String
        /// The floor this path is compared with (nil for floors themselves).
        public var floor: String?
        /// The percentiles.
        public var latency: LatencySummary
        /// p50 / the floor's p50, paired: the median of per-round ratios of the
        /// rounds' p50s (path and floor sampled alternately within each round), with
        /// its 95% bootstrap interval (nil for floors themselves).
        public var p50Ratio: PairedRatio?

        enum CodingKeys: String, CodingKey {
            case path, floor, p50Ratio
        }
    }

    /// Sustained interrupt rate of one path.
    public struct Throughput: Codable, Equatable, Sendable {
        /// The path's name.
        public var path: String
        /// Vectors kept busy at once.
        public var vectors: Int
        /// Interrupts the guest handled per second.
        public var perSecond: Double
        /// Interrupts handled in the measured interval.
        public var handled: Int
        /// The interval, seconds.
        public var seconds: Double
    }

    /// Signals sent back to back on one vector, and what the guest took.
    public struct Burst: Codable, Equatable, Sendable {
        /// The path's name.
        public var path: String
        /// Bursts sent.
        public var bursts: Int
        /// Signals per burst.
        public var signalsPerBurst: Int
        /// Interrupts the guest handled, all bursts.
        public var delivered: Int
        /// Signals that merged into another interrupt (signals - delivered).
        public var coalesced: Int

        /// A burst result.
        public init(path: String, bursts: Int, signalsPerBurst: Int, delivered: Int) {
            self.path = path
            self.bursts = bursts
            self.signalsPerBurst = signalsPerBurst
            self.delivered = delivered
            self.coalesced = bursts * signalsPerBurst - delivered
        }
    }

    /// A ratio to a floor from interleaved rounds (path, then floor, each
    /// round): the median of the per-round ratios and its 95% bootstrap
    /// interval. A target is met only when `high` is under the limit.
    public struct PairedRatio: Codable, Equatable, Sendable {
        /// Median of the per-round ratios.
        public var median: Double
        /// 2.5th percentile of the bootstrapped medians.
        public var low: Double
        /// 97.5th percentile of the bootstrapped medians.
        public var high: Double
        /// Rounds behind it.
        public var rounds: Int

        /// The paired ratio of `path[i] / floor[i]`, with `resamples` bootstrap
        /// resamples drawn from a fixed seed (the same data give the same interval).
        public init?(path: [Double], floor: [Double], resamples: Int = 2000) {
            let ratios = zip(path, floor).compactMap { $1 > 0 ? $0 / $1 : nil }
            guard !ratios.isEmpty else { return nil }
            func median(_ values: [Double]) -> Double {
                let sorted = values.sorted()
                let mid = sorted.count / 2
                return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
            }
            var state: UInt64 = 0x9E37_79B9_7F4A_7C15
            func next() -> UInt64 {  // SplitMix64
                state &+= 0x9E37_79B9_7F4A_7C15
                var z = state
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                return z ^ (z >> 31)
            }
            var medians: [Double] = []
            medians.reserveCapacity(resamples)
            var sample = [Double](repeating: 0, count: ratios.count)
            for _ in 0..<resamples {
                for i in sample.indices { sample[i] = ratios[Int(next() % UInt64(ratios.count))] }
                medians.append(median(sample))
            }
            medians.sort()
            self.median = median(ratios)
            low = medians[Int(Double(resamples - 1) * 0.025)]
            high = medians[Int(Double(resamples - 1) * 0.975)]
            rounds = ratios.count
        }
    }

    /// Bringing `vectors` MSI-X vectors live through the emulator.
    ///
    /// Driven by a real guest (msix_bench.S) on a TinyVM of its own with the
    /// PCI test device: every entry programmed masked (by the host, untimed),
    /// then either `linux_order` (enable MSI-X, then clear each entry's mask
    /// one MMIO write at a time, as request_irq does) or `function_mask_batch`
    /// (enable with the function masked, clear every entry's mask, clear the
    /// function mask). `us` runs from the guest's mark just before its first
    /// write (host CLOCK_MONOTONIC, when the VMM handles that exit) until the
    /// host sees every vector live in the kernel: its irqfd armed and no
    /// entry waiting for a push.
    public struct MsixBringUp: Codable, Equatable, Sendable {
        /// Vectors brought live.
        public var vectors: Int
        /// `linux_order` or `function_mask_batch`.
        public var mode: String
        /// Microseconds from the guest's first write until every vector was live
        /// and armed (the median of `rounds` runs).
        public var us: Double
        /// KVM_SET_GSI_ROUTING calls made (the most in any run).
        public var pushes: Int
        /// `coalescing` (deferred commits, relay-served) or `synchronous` (one push per change).
        public var partition: String
        /// Guest runs per order (the median of which is `us`).
        public var rounds: Int?
        /// linux_order rows on the coalescing partition: the median of the per-round
        /// ratios to function_mask_batch (paired rounds), with its 95% interval.
        public var ratioToBatch: PairedRatio?
    }

    /// The first interrupt after a vector goes live (`first_interrupt[]`):
    /// the guest rings a masked vector, waits for its PBA bit and unmasks it;
    /// a sample runs from the VMM receiving that unmask write to it receiving
    /// the OUT the guest's handler makes first (host CLOCK_MONOTONIC).
    public struct FirstInterrupt: Codable, Equatable, Sendable {
        /// `coalescing` (the entry was committed while the vector was masked,
        /// since the emulator routes programmed vectors early; the unmask arms
        /// the irqfd) or `synchronous` (the entry is pushed and the irqfd armed first).
        public var path: String
        /// Median, µs.
        public var p50Us: Double
        /// 99th percentile, µs.
        public var p99Us: Double
        /// Vectors measured, one sample each.
        public var samples: Int
    }

    /// Programming N routes (median of the repetitions).
    public struct Programming: Codable, Equatable, Sendable {
        /// N.
        public var routes: Int
        /// Make N routes and set their MSIs inside one batch (eventfds, one push, N arms).
        public var batchedUs: Double
        /// Table pushes the batch made.
        public var batchedPushes: Int
        /// The same outside a batch: one push per route.
        public var oneByOneUs: Double
        /// Table pushes one by one made.
        public var oneByOnePushes: Int
        /// One KVM_SET_GSI_ROUTING of N MSI entries (plus the irqchip's), built and pushed in C.
        public var rawPushUs: Double
        /// A C VMM making the same N routes: N eventfds, one push, N KVM_IRQFD.
        public var rawProgramUs: Double
        /// New MSIs for N live routes inside one batch: one push and nothing else.
        public var retargetBatchedUs: Double
        /// Table pushes the retarget made.
        public var retargetPushes: Int
        /// Dropping the N routes inside one batch.
        public var dropBatchedUs: Double
        /// Table pushes the drop made.
        public var dropPushes: Int
        /// The fastest retarget (the library's cost without the kernel's slow spells).
        public var retargetMinUs: Double
        /// The fastest raw push.
        public var rawPushMinUs: Double
        /// Repetitions behind each median (one-by-one runs once for N >= 1024).
        public var repetitions: Int
        /// The drop's C floor: N KVM_IRQFD deassigns, N closes, one push.
        public var dropFloorUs: Double?
        /// Retarget / raw push, paired round by round (each retarget followed by a raw push).
        public var retargetRatio: PairedRatio?
        /// Batched drop / its C floor, paired round by round.
        public var dropRatio: PairedRatio?
        /// N `setMsiDeferred` calls outside a batch on a coalescing partition, until
        /// every entry is pushed and every route armed.
        public var oneByOneDeferredUs: Double?
        /// Table pushes the deferred one-by-one made.
        public var oneByOneDeferredPushes: Int?
        /// Deferred one-by-one / one raw push of N, paired round by round.
        public var deferredRatio: PairedRatio?
        /// That raw push (median): made with no irqfd armed on the VM, so it is
        /// cheaper than `rawPushUs`, which the retargets' 2048 armed irqfds slow.
        public var deferredRawPushUs: Double?
        /// The least a C VMM does to bring N routes live whose eventfds exist:
        /// one push of N entries and N KVM_IRQFD assigns (median).
        public var deferredArmFloorUs: Double?
        /// Deferred one-by-one / that floor, paired round by round.
        public var deferredArmRatio: PairedRatio?
        /// The floor of the deferred path as it is served: that floor plus, per
        /// route, the interim's epoll_ctl ADD while its entry waits and
        /// EPOLL_CTL_DEL before its arm (median; `bench_floor_arm_served`).
        public var deferredServedFloorUs: Double?
        /// Deferred one-by-one / that served floor, paired round by round.
        public var deferredServedRatio: PairedRatio?

        // The deferred ratios' keys carry a `one_by_one_` prefix their names do not
        // (the raw values are written before the encoder's snake-case conversion).
        enum CodingKeys: String, CodingKey {
            case routes, batchedUs, batchedPushes, oneByOneUs, oneByOnePushes, rawPushUs, rawProgramUs
            case retargetBatchedUs, retargetPushes, dropBatchedUs, dropPushes, retargetMinUs, rawPushMinUs
            case repetitions, dropFloorUs, retargetRatio, dropRatio, oneByOneDeferredUs, oneByOneDeferredPushes
            case deferredRawPushUs, deferredArmFloorUs, deferredServedFloorUs
            case deferredRatio = "oneByOneDeferredRatio"
            case deferredArmRatio = "oneByOneDeferredArmRatio"
            case deferredServedRatio = "oneByOneDeferredServedRatio"
        }
    }

    /// Mask + unmask of an armed route.
    public struct MaskUnmask: Codable, Equatable, Sendable {
        /// The library: `mask()` then `unmask()`.
        public var usPerCycle: Double
        /// C: KVM_IRQFD deassign then assign.
        public var rawUsPerCycle: Double
        /// Table pushes the library's cycles made (rule 4: none).
        public var pushes: Int
        /// KVM_IRQFD calls per library cycle (2 expected).
        public var irqfdCallsPerCycle: Double
        /// Cycles measured, each side.
        public var cycles: Int
        /// Library / raw per cycle, paired block by block (each library block followed by a raw one).
        public var ratio: PairedRatio?
    }

    /// Route lifecycle rates and memory.
    public struct Lifecycle: Codable, Equatable, Sendable {
        /// `newRoute()` then release, no MSI (an eventfd and a GSI): per second.
        public var createsDropsPerSecond: Double
        /// `newRoute()`, `setMsi`, release (2 pushes, arm, disarm): per second.
        public var programmedPerSecond: Double
        /// The programmed lifecycle done in C: per second.
        public var rawProgrammedPerSecond: Double
        /// Routes alive while memory was measured.
        public var liveRoutes: Int
        /// Process heap bytes per live programmed route (mallinfo2 in-use delta).
        public var heapBytesPerRoute: Double
        /// Resident bytes per live programmed route (/proc/self/statm delta the
        /// first time that many routes exist; page-granular).
        public var rssBytesPerRoute: Double
    }

    /// One performance target: the ratio measured and whether it is met.
    public struct TargetCheck: Codable, Equatable, Sendable {
        /// What is compared with what.
        public var name: String
        /// The measured ratio (library / floor); nil if a side was not measured.
        public var ratio: Double?
        /// The 95% bootstrap interval's ends, when the ratio is paired.
        public var low: Double?
        /// See `low`.
        public var high: Double?
        /// The largest ratio the target allows.
        public var limit: Double
        /// Whether the target holds: a paired ratio's interval lies under the
        /// limit (`high < limit`); an unpaired one, `ratio <= limit`.
        public var met: Bool?
        /// How to read it.
        public var note: String

        /// A check of an unpaired ratio.
        public init(name: String, ratio: Double?, limit: Double, note: String) {
            self.name = name
            self.ratio = ratio
            self.limit = limit
            self.met = ratio.map { $0 <= limit }
            self.note = note
        }

        /// A check of a paired ratio: met only when the
        /// interval's upper end is under the limit.
        public init(name: String, paired: PairedRatio?, limit: Double, note: String) {
            self.name = name
            ratio = paired?.median
            low = paired?.low
            high = paired?.high
            self.limit = limit
            met = paired.map { $0.high < limit }
            self.note = note
        }
    }

    /// The delivery result of `path`, if measured.
    public func delivery(_ path: String) -> Delivery? { delivery.first { $0.path == path } }

    /// The report as pretty-printed JSON with sorted keys. Keys are the
    /// properties' names in snake case (`p50Us` is `p50_us`); the few
    /// `CodingKeys` that remain name the exceptions.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return try encoder.encode(self)
    }

    /// Reads a report written by `jsonData()`.
    public static func decode(_ data: Data) throws -> BenchReport {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(BenchReport.self, from: data)
    }
}

// Coding in an extension, so the struct keeps its memberwise initializer.
extension BenchReport.Delivery {
    // Flattened: {"path":..,"samples":..,"p50_us":..,...}: the percentiles sit beside the path.

    /// Reads a path's result written by `encode(to:)`.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        path = try container.decode(String.self, forKey: .path)
        floor = try container.decodeIfPresent(String.self, forKey: .floor)
        p50Ratio = try container.decodeIfPresent(BenchReport.PairedRatio.self, forKey: .p50Ratio)
        latency = try LatencySummary(from: decoder)
    }

    /// Writes the path, its floor and ratio, and the percentiles in one object.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(path, forKey: .path)
        try container.encodeIfPresent(floor, forKey: .floor)
        try container.encodeIfPresent(p50Ratio, forKey: .p50Ratio)
        try latency.encode(to: encoder)
    }
}
