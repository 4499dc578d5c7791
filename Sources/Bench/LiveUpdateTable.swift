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
        var sections = [
            table.render(
                title: "Live update: a running guest moved to a VM made beforehand, \(l.rounds) interleaved rounds, "
                    + "\(l.routes) route(s); \(l.signals) device signals, \(l.lost) lost")
        ]
        var targets = TextTable(["target", "value", "limit", "met"])
        for t in l.targets {
            targets.add([t.name, ratio(t.ratio), ratio(t.limit), t.met.map { $0 ? "met" : "MISSED" } ?? "not measured"])
        }
        targets.add(["pause / floor (paired, median [95%])", pairedText(l.pauseRatio), "", ""])
        sections.append(targets.render(title: "Live-update targets"))
        return sections
    }
}
