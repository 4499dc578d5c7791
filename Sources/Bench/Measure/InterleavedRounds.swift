/// Runs `rounds` rounds in which each of `sides` sides (0..<sides) runs once,
/// the order rotating by one each round, so that no side always follows the
/// same other and every ratio can be paired by round. `announce(r)` is
/// called before round `r`.
func interleave<E: Error>(
    rounds: Int, sides: Int, announce: (Int) -> Void, _ side: (Int) throws(E) -> Void
) throws(E) {
    var order = Array(0..<sides)
    for r in 0..<rounds {
        announce(r)
        for item in order { try side(item) }
        order.append(order.removeFirst())
    }
}

/// One side's latency over interleaved rounds: every sample, and each
/// round's median and 99th percentile (µs), which pair its rounds with
/// another side's.
struct RoundLatencies {
    /// Every sample of every round, nanoseconds.
    var all: [UInt64] = []
    /// Each round's median, µs.
    var p50: [Double] = []
    /// Each round's 99th percentile, µs.
    var p99: [Double] = []

    /// Adds one round's samples (nanoseconds).
    mutating func add(round ns: [UInt64]) {
        all += ns
        let us = ns.map { Double($0) / 1000 }
        p50.append(BenchRunner.median(us))
        p99.append(Self.percentile(us, 99))
    }

    /// The `p`th percentile (nearest rank) of `values`; 0 when there are none.
    static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let s = values.sorted()
        let rank = Int((p / 100 * Double(s.count)).rounded(.up)) - 1
        return s[min(s.count - 1, max(0, rank))]
    }
}

extension [BenchReport.NamedRatio] {
    /// Appends `ratio` under `name`, unless it could not be formed (no paired rounds).
    mutating func append(_ name: String, _ ratio: BenchReport.PairedRatio?) {
        if let ratio { append(.init(name: name, ratio: ratio)) }
    }
}
