import Bench
import Testing

/// The paired ratio: per-round ratios, their median and a bootstrap interval around it.
@Suite struct PairedRatioTests {
    @Test func constantRatiosGiveAPointInterval() throws {
        let r = try #require(BenchReport.PairedRatio(path: [2, 4, 6], floor: [1, 2, 3]))
        #expect(r.median == 2 && r.low == 2 && r.high == 2 && r.rounds == 3)
    }

    @Test func theIntervalHoldsTheMedianAndPairsRoundByRound() throws {
        // Drift: both path and floor slow down together; paired ratios stay near 1.5
        // although block medians (path 60 vs floor 20.5...) would not.
        let floor: [Double] = (1...21).map { Double($0 * 10) }
        let path = floor.enumerated().map { $1 * (1.4 + 0.01 * Double($0 % 21)) }
        let r = try #require(BenchReport.PairedRatio(path: path, floor: floor))
        #expect(r.low <= r.median && r.median <= r.high)
        #expect(abs(r.median - 1.5) < 0.001 && r.low >= 1.4 && r.high <= 1.6)
        #expect(BenchReport.PairedRatio(path: [], floor: []) == nil)
    }
}
