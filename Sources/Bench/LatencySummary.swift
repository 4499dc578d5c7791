public import Histogram

/// Percentiles of a set of latency samples, in microseconds, read from an
/// HdrHistogram that recorded them in nanoseconds with three significant
/// digits (so every percentile is within 0.1% of the exact sample value).
public struct LatencySummary: Codable, Equatable, Sendable {
    /// Samples recorded.
    public var samples: Int
    /// The smallest sample.
    public var minUs: Double
    /// The median.
    public var p50Us: Double
    /// The 90th percentile.
    public var p90Us: Double
    /// The 99th percentile.
    public var p99Us: Double
    /// The 99.9th percentile.
    public var p999Us: Double
    /// The largest sample.
    public var maxUs: Double
    /// The arithmetic mean.
    public var meanUs: Double
    /// The distribution as (latency in µs, fraction of samples at or below it)
    /// points, in ascending order: enough to draw the CDF down to the tail.
    public var cdf: [CDFPoint] = []

    /// One point of a cumulative distribution.
    public struct CDFPoint: Codable, Equatable, Sendable {
        /// Latency, µs.
        public var us: Double
        /// Fraction of samples at or below `us` (0...1).
        public var fraction: Double
    }
}

extension LatencySummary {
    /// The summary of a histogram of nanosecond samples.
    public init(nanoseconds histogram: Histogram<UInt64>) {
        let us = { (ns: UInt64) in Double(ns) / 1000 }
        guard histogram.totalCount > 0 else {
            self.init(samples: 0, minUs: 0, p50Us: 0, p90Us: 0, p99Us: 0, p999Us: 0, maxUs: 0, meanUs: 0)
            return
        }
        let minUs = us(histogram.min)
        let maxUs = us(histogram.max)
        // HdrHistogram's percentile iteration: ticks that halve the distance to
        // 100% each step, so the tail gets as many points as the body.
        var points: [CDFPoint] = [CDFPoint(us: minUs, fraction: 0)]
        for step in histogram.percentiles(ticksPerHalfDistance: 5) {
            let point = CDFPoint(us: us(step.value), fraction: Swift.min(1, step.percentile / 100))
            if let last = points.last, last.us == point.us {
                points[points.count - 1].fraction = Swift.max(last.fraction, point.fraction)
            } else {
                points.append(point)
            }
        }
        if points.last?.fraction != 1 { points.append(CDFPoint(us: maxUs, fraction: 1)) }
        self.init(
            samples: Int(histogram.totalCount), minUs: minUs,
            p50Us: us(histogram.valueAtPercentile(50)), p90Us: us(histogram.valueAtPercentile(90)),
            p99Us: us(histogram.valueAtPercentile(99)), p999Us: us(histogram.valueAtPercentile(99.9)),
            maxUs: maxUs, meanUs: histogram.mean / 1000, cdf: points)
    }

    /// The summary of `nanoseconds` (recorded into a fresh histogram).
    public init(nanoseconds: [UInt64]) {
        var histogram = LatencySummary.histogram()
        for value in nanoseconds { _ = histogram.record(value) }
        self.init(nanoseconds: histogram)
    }

    /// An empty histogram for nanosecond samples from 1 ns to 100 s, three
    /// significant digits; it grows if a sample is larger.
    public static func histogram() -> Histogram<UInt64> {
        var histogram = Histogram<UInt64>(
            lowestDiscernibleValue: 1, highestTrackableValue: 100_000_000_000, numberOfSignificantValueDigits: .three)
        histogram.autoResize = true
        return histogram
    }
}
