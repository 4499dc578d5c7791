#if os(Linux)
import Bench
import Foundation
import TestSupport
import Testing

/// `irqfd bench --only live-update --quick` on the real /dev/kvm: both sides
/// move their guest every round, nothing is lost, and the section lands in
/// the JSON and the tables. Not how fast: no timing thresholds here.
@Suite(needsKVM) struct LiveUpdateBenchTests {
    @Test func quickSectionMovesBothGuestsEveryRoundLosingNothing() throws {
        let report = try BenchRunner(options: BenchOptions(quick: true, sections: [.liveUpdate])).run()
        let l = try #require(report.liveUpdate)
        #expect(l.rounds == 20)
        #expect(l.pause.samples == l.rounds && l.floorPause.samples == l.rounds)
        #expect(l.handOff.samples == l.rounds && l.floorHandOff.samples == l.rounds)
        #expect(l.pause.p50Us > 0 && l.floorPause.p50Us > 0)
        #expect(l.handOff.p50Us >= l.pause.p50Us, "the whole hand-off holds the pause")
        #expect(l.pauseRatio?.rounds == l.rounds)
        #expect(l.signals > l.rounds, "the devices signalled throughout")
        #expect(l.lost == 0, "every signal reached the guest's handler")
        #expect(l.targets.count == 3)
        for t in l.targets {
            #expect(t.met != nil, "\(t.name)")
            #expect(report.targets.contains(t))
        }
        _ = try checkedSection(
            "live_update", of: report,
            keys: ["rounds", "pause", "hand_off", "floor_pause", "floor_hand_off", "pause_ratio", "lost", "targets"])
        let text = ReportText.render(report)
        #expect(text.contains("Live update: a running guest moved") && text.contains("Live-update targets"))
    }
}
#endif
