#if os(Linux)
import Bench
import Foundation
import TestSupport
import Testing

/// The measurements themselves, run small on the real /dev/kvm: they must
/// measure what they say (every path delivers, counts add up, the rules the
/// numbers rest on hold). Not how fast: that is the benchmark's job.
@Suite(needsKVM, .serialized) struct RunnerTests {
    @Test func everyPathDeliversEverySampleAndMaskMakesNoPush() throws {
        var progress: [String] = []
        let runner = BenchRunner(
            options: BenchOptions(samples: 40, quick: true, sections: [.delivery, .bursts, .mask])
        ) {
            progress.append($0)
        }
        let report = try runner.run()
        #expect(report.delivery.map(\.path) == ["irqfd", "raw", "relay", "raw_relay", "userspace", "raw_signal_msi"])
        for d in report.delivery {
            #expect(d.latency.samples == 40, "\(d.path)")
            #expect(
                d.latency.minUs > 0 && d.latency.p50Us <= d.latency.p99Us && d.latency.p99Us <= d.latency.maxUs,
                "\(d.path)")
        }
        #expect(report.delivery("irqfd")?.floor == "raw")
        #expect(report.delivery("raw")?.floor == nil)
        for b in report.bursts {
            #expect(b.delivered >= b.bursts, "\(b.path): every burst delivers at least once")
            #expect(b.delivered <= b.bursts * b.signalsPerBurst, "\(b.path): never more interrupts than signals")
        }
        let mask = try #require(report.maskUnmask)
        #expect(mask.pushes == 0, "rule 4: mask and unmask push no table")
        #expect(mask.irqfdCallsPerCycle == 2)
        #expect(report.programming.isEmpty && report.lifecycle == nil)
        #expect(report.gaps.contains { $0.hasPrefix("programming") })
        #expect(!progress.isEmpty)
        #expect(report.targets.first { $0.name.hasPrefix("irqfd") }?.ratio != nil)
    }

    /// `programmingCounts…` measures heap bytes per route from malloc's
    /// process-wide statistics: it runs in a process of its own.
    static let programmingFilter = #"BenchTests.RunnerTests/programmingCountsOnePushPerBatchAndOnePerRouteOneByOne"#
    @Test(notInOwnProcess) func programmingCountsOnePushPerBatchAndOnePerRouteOneByOneInItsOwnProcess() throws {
        try runInOwnProcess(Self.programmingFilter)
    }

    /// Rule 8 as the benchmark counts it: one push per batch, one per route
    /// one by one, for every N up to the machine's maximum.
    @Test(inOwnProcess(Self.programmingFilter)) func programmingCountsOnePushPerBatchAndOnePerRouteOneByOne() throws {
        let report = try BenchRunner(options: BenchOptions(quick: true, sections: [.programming, .lifecycle])).run()
        #expect(report.programming.map(\.routes).prefix(4) == [1, 16, 256, 2048])
        #expect(report.programming.count == 5)
        for p in report.programming {
            #expect(p.batchedPushes == 1, "N = \(p.routes)")
            #expect(p.retargetPushes == 1, "N = \(p.routes)")
            #expect(p.dropPushes == 1, "N = \(p.routes)")
            #expect(p.oneByOnePushes == p.routes, "N = \(p.routes)")
            #expect(p.rawPushUs > 0 && p.rawProgramUs > 0 && p.batchedUs > 0)
        }
        let lifecycle = try #require(report.lifecycle)
        #expect(lifecycle.liveRoutes == report.machine.gsiCapacity)
        #expect(lifecycle.heapBytesPerRoute > 0)
    }
}
#endif
