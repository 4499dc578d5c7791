/// The vhost-user section's terminal tables (`ReportText.render` calls this).
extension ReportText {
    /// "1.23x [1.10x, 1.31x] n=20", or "-".
    static func pairedText(_ r: BenchReport.PairedRatio?) -> String {
        r.map { "\(ratio($0.median)) [\(ratio($0.low)), \(ratio($0.high))] n=\($0.rounds)" } ?? "-"
    }

    /// The tables of `report.vhostUser`, or nothing when it was not measured.
    public static func renderVhostUser(_ report: BenchReport) -> [String] {
        guard let v = report.vhostUser else { return [] }
        var sections: [String] = []
        var latency = TextTable([
            "back-end", "mode", "samples", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "failed",
        ])
        for b in v.backends {
            for m in b.latency {
                let l = m.latency
                latency.add([
                    b.backend, m.mode, String(l.samples), us(l.p50Us), us(l.p90Us), us(l.p99Us), us(l.p999Us),
                    us(l.maxUs), String(m.failed),
                ])
            }
            let f = b.floor
            latency.add([
                b.backend, "floor (host kick -> call)", String(f.samples), us(f.p50Us), us(f.p90Us), us(f.p99Us),
                us(f.p999Us), us(f.maxUs), "0",
            ])
        }
        let r = v.rawIrqfd
        latency.add([
            "-", "raw irqfd (signal -> handler)", String(r.samples), us(r.p50Us), us(r.p90Us), us(r.p99Us),
            us(r.p999Us), us(r.maxUs), "-",
        ])
        sections.append(
            latency.render(
                title:
                    "vhost-user virtio-blk request latency: guest notify -> completion handler ran (guest RDTSC at \(format(v.tscKHz / 1000, 1)) MHz, guest/host clock check \(format(v.tscCheck, 3))), one request in flight, \(v.rounds) interleaved rounds"
            ))

        var ratios = TextTable(["back-end", "paired ratio", "median [95%] rounds"])
        for b in v.backends {
            for n in b.ratios { ratios.add([b.backend, n.name, pairedText(n.ratio)]) }
        }
        sections.append(ratios.render(title: "vhost-user latency ratios (per-round medians/p99s, paired by round)"))

        var throughput = TextTable(["back-end", "mode", "depth", "requests/s", "requests", "/ userspace (paired, 95%)"])
        for b in v.backends {
            for t in b.throughput {
                throughput.add([
                    b.backend, t.mode, String(t.depth), count(t.perSecond), String(t.requests),
                    pairedText(t.overUserspace),
                ])
            }
        }
        sections.append(
            throughput.render(
                title:
                    "vhost-user throughput: reads of 512 bytes, queue depth 1, 8, 32 (guest resubmits each completion)")
        )

        if let m = v.maskUnmask {
            var mask = TextTable([
                "spacing", "side", "µs per cycle", "mean µs", "messages", "KVM_IRQFD", "/ ours (paired, 95%)",
            ])
            let qemuName = "QEMU vhost_virtqueue_mask (2 SET_VRING_CALL\(m.replyAck ? " + REPLY_ACK" : ""))"
            mask.add([
                "isolated", "ours: MSI-X emulator", us(m.oursUs), m.oursMeanUs.map(us) ?? "-",
                format(m.oursMessagesPerCycle, 1), format(m.oursIrqfdCallsPerCycle, 1), "",
            ])
            mask.add([
                "isolated", qemuName, us(m.qemuStrategyUs), m.qemuStrategyMeanUs.map(us) ?? "-",
                format(m.qemuMessagesPerCycle, 1), "0", pairedText(m.qemuOverOurs),
            ])
            if let raw = m.rawUs {
                mask.add([
                    "isolated", "C floor: KVM_IRQFD deassign + assign", us(raw), "-", "0", "2",
                    m.oursOverRaw.map { "ours/C " + pairedText($0) } ?? "-",
                ])
            }
            if let b = m.backToBack {
                mask.add([
                    "back to back", "ours: MSI-X emulator", us(b.oursUs), "-", format(m.oursMessagesPerCycle, 1),
                    format(m.oursIrqfdCallsPerCycle, 1), "",
                ])
                mask.add([
                    "back to back", qemuName, us(b.qemuStrategyUs), "-", format(m.qemuMessagesPerCycle, 1), "0",
                    pairedText(b.qemuOverOurs),
                ])
                mask.add([
                    "back to back", "C floor: KVM_IRQFD deassign + assign", us(b.rawUs), "-", "0", "2",
                    b.oursOverRaw.map { "ours/C " + pairedText($0) } ?? "-",
                ])
            }
            sections.append(
                mask.render(
                    title:
                        "vhost-user mask + unmask of queue 0's vector against qemu-storage-daemon (\(m.cycles) cycles per side and spacing; per cycle)"
                ))
        }

        sections += renderVirtioFs(v)

        var targets = TextTable(["target", "ratio [95%]", "limit", "met", "note"])
        for t in v.targets {
            let paired = v.targetRatios.first { $0.name == t.name }?.ratio
            targets.add([
                t.name, paired.map(pairedText) ?? ratio(t.ratio), ratio(t.limit),
                t.met.map { $0 ? "yes" : "NO" } ?? "not measured", t.note,
            ])
        }
        sections.append(
            targets.render(title: "vhost-user targets (met when the paired interval's upper end is within the limit)"))
        if !v.skipped.isEmpty {
            sections.append("vhost-user skipped:\n" + v.skipped.map { "  - " + $0 }.joined(separator: "\n"))
        }
        return sections
    }
}

/// The vhost-user section's picture: one latency CDF per back-end, every mode and the floor.
extension BenchSVG {
    /// Charts for `report.vhostUser` (empty when not measured).
    static func vhostUserCharts(_ report: BenchReport) -> [SVGChart] {
        guard let v = report.vhostUser else { return [] }
        let colors = ["irqfd": "#1f77b4", "relay": "#d62728", "userspace": "#2ca02c"]
        return v.backends.map { b in
            var series = b.latency.map { m in
                SVGChart.Series(
                    name: "\(m.mode)  p50 \(ReportText.us(m.latency.p50Us)) µs", color: colors[m.mode] ?? "#555",
                    points: m.latency.cdf.map { ($0.us, $0.fraction) })
            }
            series.append(
                SVGChart.Series(
                    name: "floor (host-driven)  p50 \(ReportText.us(b.floor.p50Us)) µs", color: "#7f7f7f",
                    points: b.floor.cdf.map { ($0.us, $0.fraction) }, dashed: true))
            series.append(
                SVGChart.Series(
                    name: "raw irqfd delivery  p50 \(ReportText.us(v.rawIrqfd.p50Us)) µs", color: "#9467bd",
                    points: v.rawIrqfd.cdf.map { ($0.us, $0.fraction) }, dashed: true))
            return SVGChart(
                title: "vhost-user (\(b.backend)): guest notify -> completion handler, CDF",
                xLabel: "latency, µs (log scale)", yLabel: "fraction of samples at or below",
                xLog: true, yLog: false, yRange: 0...1, series: series)
        }
    }
}
