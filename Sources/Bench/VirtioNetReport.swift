/// `irqfd bench --only vhost-user`, virtio-net: a frame's round trip through
/// dpdk-testpmd (io forwarding, looped port), against its floor, in one run.
extension BenchReport {
    /// The virtio-net section: round-trip latency (guest transmit notify ->
    /// its receive handler) per delivery mode and the host-driven floor on
    /// the same testpmd, and frames per second at batch 1 and 32. Every
    /// ratio is paired (interleaved rounds, median of the per-round ratios
    /// with its 95% bootstrap interval).
    public struct VirtioNet: Codable, Equatable, Sendable {
        /// Round-trip latency of one delivery mode.
        public struct Latency: Codable, Equatable, Sendable {
            /// `irqfd`, `relay` or `userspace`.
            public var mode: String
            /// Guest transmit notify -> receive handler ran, 60-byte frames, one in flight.
            public var latency: LatencySummary
            /// Frames that came back damaged (always 0 unless something is broken).
            public var damaged: Int
        }

        /// Frames per second of one mode at one batch.
        public struct Throughput: Codable, Equatable, Sendable {
            /// `irqfd`, `relay` or `userspace`.
            public var mode: String
            /// Frames in flight.
            public var batch: Int
            /// Median over the rounds, guest TSC time.
            public var perSecond: Double
            /// Frames measured in all.
            public var frames: Int
            /// This mode's rate / userspace's, paired by round (nil for userspace itself).
            public var overUserspace: PairedRatio?
        }

        /// The backend (`dpdk-testpmd`).
        public var backend: String
        /// Per delivery mode.
        public var latency: [Latency]
        /// The floor: the same testpmd driven from the host with no guest
        /// (transmit kick written -> receive call eventfd woke a host thread).
        public var floor: LatencySummary
        /// Frames per second at batch 1 and 32.
        public var throughput: [Throughput]
        /// Paired latency ratios by name.
        public var ratios: [NamedRatio]
        /// The guest's TSC rate (KVM_GET_TSC_KHZ), kHz.
        public var tscKHz: Double
        /// Interleaved latency rounds behind each ratio.
        public var rounds: Int
        /// What was skipped, and why (dpdk-testpmd not installed).
        public var skipped: [String]

        enum CodingKeys: String, CodingKey {
            case backend, latency, floor, throughput, ratios, rounds, skipped
            case tscKHz = "tscKhz"
        }
    }
}

extension ReportText {
    /// The tables of `report.virtioNet`, or nothing when it was not measured.
    public static func renderVirtioNet(_ report: BenchReport) -> [String] {
        guard let n = report.virtioNet else { return [] }
        var sections: [String] = []
        if !n.latency.isEmpty {
            var latency = TextTable(
                ["mode", "samples", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "damaged"])
            func row(_ name: String, _ l: LatencySummary, _ damaged: String) {
                latency.add([
                    name, String(l.samples), us(l.p50Us), us(l.p90Us), us(l.p99Us), us(l.p999Us), us(l.maxUs), damaged,
                ])
            }
            for m in n.latency { row(m.mode, m.latency, String(m.damaged)) }
            row("floor (host kick -> receive call)", n.floor, "0")
            let clock = "guest RDTSC at \(format(n.tscKHz / 1000, 1)) MHz"
            sections.append(
                latency.render(
                    title: "virtio-net on \(n.backend): guest transmit notify -> receive handler ran (60-byte frames, "
                        + "one in flight, \(clock), \(n.rounds) interleaved rounds)"))
            var ratios = TextTable(["paired ratio", "median [95%] rounds"])
            for r in n.ratios { ratios.add([r.name, pairedText(r.ratio)]) }
            sections.append(ratios.render(title: "virtio-net latency ratios (per-round medians/p99s, paired by round)"))
            var throughput = TextTable(["mode", "batch", "frames/s", "frames", "/ userspace (paired, 95%)"])
            for t in n.throughput {
                throughput.add([
                    t.mode, String(t.batch), count(t.perSecond), String(t.frames), pairedText(t.overUserspace),
                ])
            }
            sections.append(
                throughput.render(
                    title: "virtio-net frames per second (60-byte frames, each built and checked by the emulated guest)"
                ))
        }
        if !n.skipped.isEmpty {
            sections.append("virtio-net skipped:\n" + n.skipped.map { "  - " + $0 }.joined(separator: "\n"))
        }
        return sections
    }
}
