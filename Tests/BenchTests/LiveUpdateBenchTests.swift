#if os(Linux)
import Bench
import Foundation
import TestSupport
import Testing

/// `irqfd bench --only live-update --quick` on the real /dev/kvm: both sides
/// move their guest every round (the library's between this process and
/// `irqfd run --incoming` processes), nothing is lost, every hand-off's
/// timeline comes back, and the section lands in the JSON and the tables. Not how fast: no timing thresholds here.
@Suite(needsKVM) struct LiveUpdateBenchTests {
    @Test func quickSectionMovesBothGuestsEveryRoundLosingNothing() throws {
        let report = try BenchRunner(options: BenchOptions(quick: true, sections: [.liveUpdate])).run()
        let l = try #require(report.liveUpdate)
        #expect(l.rounds == 10)
        #expect(l.pause.samples == l.rounds && l.floorPause.samples == l.rounds)
        #expect(l.handOff.samples == l.rounds && l.floorHandOff.samples == l.rounds)
        #expect(l.pause.p50Us > 0 && l.floorPause.p50Us > 0)
        #expect(l.handOff.p50Us >= l.pause.p50Us, "the whole hand-off holds the pause")
        #expect(l.pauseRatio?.rounds == l.rounds)
        #expect(l.signals > l.rounds, "the devices signalled throughout")
        #expect(l.lost == 0, "every signal reached the guest's handler")
        #expect(l.crossProcess == true, "the guest went between processes")
        let steps = try #require(l.pauseSteps)
        #expect(steps.map(\.name).contains("commit -> successor") && steps.map(\.name).contains("push + arm"))
        #expect(steps.allSatisfy { $0.time.samples == l.rounds }, "every hand-off's timeline came back")
        let stepsP50 = steps.reduce(0) { $0 + $1.time.p50Us }
        #expect(stepsP50 > 0, "the steps took time")
        #expect(l.targets.count == 3)
        for t in l.targets {
            #expect(t.met != nil, "\(t.name)")
            #expect(report.targets.contains(t))
        }
        _ = try checkedSection(
            "live_update", of: report,
            keys: [
                "rounds", "pause", "hand_off", "floor_pause", "floor_hand_off", "pause_ratio", "lost", "targets",
                "cross_process", "pause_steps",
            ])
        let text = ReportText.render(report)
        #expect(text.contains("Live update: a running guest handed between VMM processes"))
        #expect(text.contains("Live update: where the library's pause goes") && text.contains("Live-update targets"))
    }
}
#endif
