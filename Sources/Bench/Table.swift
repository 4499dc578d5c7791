/// A plain-text table: a header row and rows of cells, the first column
/// left-aligned and the rest right-aligned (they hold numbers).
public struct TextTable: Sendable {
    /// Column headers.
    public var header: [String]
    /// Rows; each as long as `header`.
    public var rows: [[String]] = []

    /// A table with `header`.
    public init(_ header: [String]) { self.header = header }

    /// Appends a row.
    public mutating func add(_ row: [String]) { rows.append(row) }

    /// The table, a title line and two spaces between columns.
    public func render(title: String? = nil) -> String {
        let all = [header] + rows
        var widths = [Int](repeating: 0, count: header.count)
        for row in all {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        func line(_ row: [String]) -> String {
            row.enumerated().map { i, cell in
                let pad = String(repeating: " ", count: max(0, widths[i] - cell.count))
                return i == 0 ? cell + pad : pad + cell
            }.joined(separator: "  ")
        }
        var out: [String] = []
        if let title { out.append(title) }
        out.append(line(header))
        out.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
        out += rows.map(line)
        return out.joined(separator: "\n")
    }
}

/// How the report reads on a terminal.
public enum ReportText {
    /// A time in µs, with fewer decimals as it grows.
    public static func us(_ value: Double) -> String {
        switch value {
        case ..<10: format(value, 2)
        case ..<1000: format(value, 1)
        default: format(value, 0)
        }
    }

    /// A ratio, "1.02x"; "-" when missing.
    public static func ratio(_ value: Double?) -> String {
        guard let value else { return "-" }
        return format(value, 2) + "x"
    }

    /// A count or rate with thousands separators.
    public static func count(_ value: Double) -> String {
        let rounded = Int(value.rounded())
        let digits = String(abs(rounded))
        var grouped = ""
        for (i, c) in digits.enumerated() {
            if i > 0, (digits.count - i) % 3 == 0 { grouped += "," }
            grouped.append(c)
        }
        return (rounded < 0 ? "-" : "") + grouped
    }

    /// `value` with `decimals` digits after the point (no Foundation needed).
    public static func format(_ value: Double, _ decimals: Int) -> String {
        guard value.isFinite else { return "\(value)" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        let whole = Int(scaled / scale)
        var text = (value < 0 && scaled != 0 ? "-" : "") + String(whole)
        if decimals > 0 {
            let fraction = Int(scaled - Double(whole) * scale)
            let digits = String(fraction)
            text += "." + String(repeating: "0", count: decimals - digits.count) + digits
        }
        return text
    }

    /// A paired ratio as `median [low, high] n=rounds`.
    public static func paired(_ r: BenchReport.PairedRatio) -> String {
        "\(ratio(r.median)) [\(ratio(r.low)), \(ratio(r.high))] n=\(r.rounds)"
    }

    /// Every section of the report as terminal tables.
    public static func render(_ report: BenchReport) -> String {
        var sections: [String] = []

        var delivery = TextTable([
            "path", "samples", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "p50 vs floor (paired, 95%)",
        ])
        for d in report.delivery {
            let l = d.latency
            let floor = d.floor.flatMap { report.delivery($0) }
            let vsFloor: String
            if let paired = d.p50Ratio, let floor {
                vsFloor = "\(Self.paired(paired)) \(floor.path)"
            } else {
                vsFloor = floor.map { "\(ratio(l.p50Us / $0.latency.p50Us)) \($0.path)" } ?? "(floor)"
            }
            delivery.add([
                d.path, String(l.samples), us(l.p50Us), us(l.p90Us), us(l.p99Us), us(l.p999Us), us(l.maxUs), vsFloor,
            ])
        }
        sections.append(delivery.render(title: "Delivery latency: device signal -> guest handler ran"))

        var throughput = TextTable(["path", "vectors", "interrupts/s", "vs floor"])
        for t in report.throughput {
            let floorPath = Targets.Path.floors[t.path]
            let floor = report.throughput.first { $0.path == floorPath && $0.vectors == t.vectors }
            throughput.add([
                t.path, String(t.vectors), count(t.perSecond),
                floor.map { "\(ratio(t.perSecond / $0.perSecond)) \($0.path)" } ?? "(floor)",
            ])
        }
        sections.append(throughput.render(title: "Throughput: signal again as soon as the guest handled the last one"))

        var bursts = TextTable(["path", "bursts x signals", "delivered", "coalesced"])
        for b in report.bursts {
            bursts.add([b.path, "\(b.bursts) x \(b.signalsPerBurst)", String(b.delivered), String(b.coalesced)])
        }
        sections.append(bursts.render(title: "Bursts: signals sent back to back on one vector"))

        var programming = TextTable([
            "routes", "batched µs", "pushes", "one-by-one µs", "pushes", "raw push µs", "C create µs",
            "retarget µs", "pushes", "retarget/raw push", "batched/C create",
        ])
        for p in report.programming {
            programming.add([
                String(p.routes), us(p.batchedUs), String(p.batchedPushes), us(p.oneByOneUs), String(p.oneByOnePushes),
                us(p.rawPushUs), us(p.rawProgramUs), us(p.retargetBatchedUs), String(p.retargetPushes),
                ratio(p.retargetBatchedUs / p.rawPushUs), ratio(p.batchedUs / p.rawProgramUs),
            ])
        }
        sections.append(programming.render(title: "Route programming: N routes, one batch vs one by one vs C"))

        var coalesced = TextTable([
            "routes", "deferred one-by-one µs", "pushes", "/raw push", "drop batched µs", "drop C floor µs",
            "drop/floor (paired, 95%)", "retarget/raw push (paired, 95%)", "deferred/raw push (paired, 95%)",
            "C push+arms µs", "deferred/C push+arms (paired, 95%)", "C served µs", "deferred/C served (paired, 95%)",
        ])
        func paired(_ r: BenchReport.PairedRatio?) -> String { r.map(Self.paired) ?? "-" }
        for p in report.programming {
            coalesced.add([
                String(p.routes), p.oneByOneDeferredUs.map(us) ?? "-", p.oneByOneDeferredPushes.map(String.init) ?? "-",
                p.oneByOneDeferredUs.map { ratio($0 / p.rawPushUs) } ?? "-",
                us(p.dropBatchedUs), p.dropFloorUs.map(us) ?? "-", paired(p.dropRatio), paired(p.retargetRatio),
                paired(p.deferredRatio), p.deferredArmFloorUs.map(us) ?? "-", paired(p.deferredArmRatio),
                p.deferredServedFloorUs.map(us) ?? "-", paired(p.deferredServedRatio),
            ])
        }
        sections.append(
            coalesced.render(title: "Coalesced commits: setMsiDeferred one at a time; dropping N routes vs its C floor")
        )

        if let bringUps = report.msixBringUp, !bringUps.isEmpty {
            var bringUp = TextTable([
                "vectors", "partition", "mode", "runs", "median µs", "pushes", "/function-mask batch", "paired (95%)",
            ])
            for b in bringUps {
                let batch = bringUps.first { $0.partition == b.partition && $0.mode == "function_mask_batch" }
                let paired =
                    b.ratioToBatch.map { "\(ratio($0.median)) [\(ratio($0.low)), \(ratio($0.high))] n=\($0.rounds)" }
                    ?? "-"
                bringUp.add([
                    String(b.vectors), b.partition, b.mode, b.rounds.map(String.init) ?? "1", us(b.us),
                    String(b.pushes),
                    batch.map { ratio(b.us / $0.us) } ?? "-", paired,
                ])
            }
            sections.append(
                bringUp.render(
                    title:
                        "MSI-X bring-up by a guest: Linux's one-at-a-time unmasks vs one function-mask batch (guest's first write until all live in the kernel)"
                ))
        }

        if let firsts = report.firstInterrupt, !firsts.isEmpty {
            var first = TextTable(["path", "p50 µs", "p99 µs", "samples"])
            for f in firsts { first.add([f.path, us(f.p50Us), us(f.p99Us), String(f.samples)]) }
            sections.append(
                first.render(title: "First interrupt after a vector goes live: guest's unmask write to its handler"))
        }

        if let m = report.maskUnmask {
            var mask = TextTable(["", "µs per cycle", "pushes", "KVM_IRQFD per cycle"])
            mask.add(["library mask()+unmask()", us(m.usPerCycle), String(m.pushes), format(m.irqfdCallsPerCycle, 1)])
            mask.add(["raw deassign+assign", us(m.rawUsPerCycle), "0", "2.0"])
            mask.add(["ratio", m.ratio.map(Self.paired) ?? ratio(m.usPerCycle / m.rawUsPerCycle), "", ""])
            sections.append(mask.render(title: "Mask + unmask (\(m.cycles) cycles each)"))
        }

        if let l = report.lifecycle {
            var lifecycle = TextTable(["", "value"])
            lifecycle.add(["newRoute + drop (no MSI) per second", count(l.createsDropsPerSecond)])
            lifecycle.add(["newRoute + setMsi + drop per second", count(l.programmedPerSecond)])
            lifecycle.add(["same in C per second", count(l.rawProgrammedPerSecond)])
            lifecycle.add(["heap bytes per live route (\(l.liveRoutes) live)", count(l.heapBytesPerRoute)])
            lifecycle.add(["RSS bytes per live route", count(l.rssBytesPerRoute)])
            sections.append(lifecycle.render(title: "Route lifecycle"))
        }

        sections += renderVhostUser(report)
        sections += renderVirtioNet(report)
        sections += renderLiveUpdate(report)

        var targets = TextTable(["target", "ratio", "95% interval", "limit", "met"])
        for t in report.targets {
            let interval = t.low.flatMap { low in t.high.map { "[\(ratio(low)), \(ratio($0))]" } } ?? "-"
            targets.add([
                t.name, ratio(t.ratio), interval, ratio(t.limit), t.met.map { $0 ? "yes" : "NO" } ?? "not measured",
            ])
        }
        sections.append(
            targets.render(
                title:
                    "Targets (paired ratios from this run; met only when the interval's upper end is under the limit)"))

        if !report.gaps.isEmpty {
            sections.append("Not measured:\n" + report.gaps.map { "  - " + $0 }.joined(separator: "\n"))
        }
        let machine = report.machine
        sections.append(
            "Kernel \(machine.kernel), \(machine.cpus) CPUs, KVM API \(machine.kvmApiVersion), GSI limit \(machine.gsiLimit) (capacity \(machine.gsiCapacity) MSI routes); run took \(format(machine.seconds, 1)) s\(machine.quick ? " (--quick)" : "")."
        )
        return sections.joined(separator: "\n\n")
    }
}
