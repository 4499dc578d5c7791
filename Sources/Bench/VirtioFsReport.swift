/// The virtio-fs part of `irqfd bench --only vhost-user`: a FUSE READ of
/// 4 KiB through virtiofsd, per delivery mode, against a host-driven floor.
extension BenchReport {
    /// FUSE READ latency through virtiofsd, one request in flight.
    public struct VirtioFs: Codable, Equatable, Sendable {
        /// Guest notify -> the guest saw the reply (used element and interrupt), per delivery mode.
        public var latency: [VhostUserLatency]
        /// The floor: the same READ on a virtiofsd driven from the host (kick
        /// eventfd written -> call eventfd woke poll(2)), no guest and no VMM.
        public var floor: LatencySummary
        /// Paired ratios (per-round p50s and p99s, paired by round):
        /// `<mode>_p50_over_floor`, `<mode>_p99_over_floor`, `irqfd_over_userspace_p50`.
        public var ratios: [NamedRatio]
        /// Interleaved rounds behind each paired ratio.
        public var rounds: Int
        /// READs per round and side.
        public var perRound: Int

        /// The paired ratio named `name`, if measured.
        public func ratio(_ name: String) -> PairedRatio? { ratios.first { $0.name == name }?.ratio }
    }
}

extension ReportText {
    /// The virtio-fs tables of `report.vhostUser`, or nothing when it was not measured.
    static func renderVirtioFs(_ v: BenchReport.VhostUser) -> [String] {
        guard let fs = v.virtioFs else { return [] }
        var latency = TextTable(["mode", "samples", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "failed"])
        for m in fs.latency {
            let l = m.latency
            latency.add([
                m.mode, String(l.samples), us(l.p50Us), us(l.p90Us), us(l.p99Us), us(l.p999Us), us(l.maxUs),
                String(m.failed),
            ])
        }
        let f = fs.floor
        latency.add([
            "floor (host kick -> call)", String(f.samples), us(f.p50Us), us(f.p90Us), us(f.p99Us), us(f.p999Us),
            us(f.maxUs), "0",
        ])
        var ratios = TextTable(["paired ratio", "median [95%] rounds"])
        for n in fs.ratios { ratios.add([n.name, pairedText(n.ratio)]) }
        return [
            latency.render(
                title: "vhost-user virtio-fs on virtiofsd: FUSE READ of 4 KiB, guest notify -> reply seen, "
                    + "one request in flight, \(fs.rounds) interleaved rounds of \(fs.perRound)"),
            ratios.render(title: "virtio-fs latency ratios (per-round p50s/p99s, paired by round)"),
        ]
    }
}
