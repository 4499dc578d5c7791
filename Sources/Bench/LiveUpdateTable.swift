/// The live-update section's terminal table (`ReportText.render` calls this).
extension ReportText {
    /// The table of `report.liveUpdate`, or nothing when it was not measured.
    public static func renderLiveUpdate(_ report: BenchReport) -> [String] {
        guard let l = report.liveUpdate else { return [] }
        var table = TextTable(["", "samples", "p50 µs", "p90 µs", "p99 µs", "max µs"])
        func row(_ name: String, _ s: LatencySummary) {
            table.add([name, String(s.samples), us(s.p50Us), us(s.p90Us), us(s.p99Us), us(s.maxUs)])
        }
        row("pause (library)", l.pause)
        row("pause (C floor)", l.floorPause)
        row("whole hand-off (library)", l.handOff)
        row("whole hand-off (C floor)", l.floorHandOff)
        let moved =
            l.crossProcess == true
            ? "handed between VMM processes (the successor's VM made before the pause; floor: one process)"
            : "moved to a VM made beforehand"
        var sections = [
            table.render(
                title: "Live update: a running guest \(moved), \(l.rounds) interleaved rounds, "
                    + "\(l.routes) route(s); \(l.signals) device signals, \(l.lost) lost")
        ]
        if let steps = l.pauseSteps, !steps.isEmpty {
            var breakdown = TextTable(["pause step (library)", "p50 µs", "p90 µs", "p99 µs"])
            for step in steps {
                breakdown.add([step.name, us(step.time.p50Us), us(step.time.p90Us), us(step.time.p99Us)])
            }
            sections.append(breakdown.render(title: "Live update: where the library's pause goes"))
        }
        var targets = TextTable(["target", "value", "limit", "met"])
        for t in l.targets {
            targets.add([t.name, ratio(t.ratio), ratio(t.limit), t.met.map { $0 ? "met" : "MISSED" } ?? "not measured"])
        }
        targets.add(["pause / floor (paired, median [95%])", pairedText(l.pauseRatio), "", ""])
        sections.append(targets.render(title: "Live-update targets"))
        return sections
    }
}
