#if os(Linux)
import Bench
import Foundation
import TestSupport
import Virtio
import Testing

/// Whether the launcher finds dpdk-testpmd (the section is skipped, and says so, otherwise).
private let testpmdInstalled = NetBackend.isTestpmdInstalled

/// The virtio-net part of `irqfd bench --only vhost-user --quick` on the real
/// /dev/kvm and dpdk-testpmd: every part measures what it says and renders.
/// Not how fast (that is the benchmark's job): no timing thresholds here.
@Suite(needsKVM) struct VirtioNetBenchTests {
    @Test func quickSectionMeasuresEveryModeTheFloorAndBothBatches() throws {
        let net = try VirtioNetBench(options: BenchOptions(quick: true, sections: [.vhostUser]), progress: { _ in })
            .run()
        guard testpmdInstalled else {
            #expect(net.skipped.contains { $0.contains("dpdk-testpmd is not installed") })
            #expect(net.latency.isEmpty)
            return
        }
        #expect(net.skipped.isEmpty)
        // Quick: 6 rounds of 60 frames per side, 2 throughput rounds of 256 frames.
        #expect(net.latency.map(\.mode) == ["irqfd", "relay", "userspace"])
        for m in net.latency {
            let l = m.latency
            #expect(l.samples == net.rounds * 60, "\(m.mode)")
            #expect(l.minUs > 0 && l.p50Us <= l.p99Us && l.p99Us <= l.p999Us && l.p999Us <= l.maxUs, "\(m.mode)")
            #expect(m.damaged == 0, "\(m.mode): every frame came back intact")
        }
        #expect(net.floor.samples == net.rounds * 60 && net.floor.minUs > 0)
        #expect(net.throughput.count == 6, "3 modes x batches 1 and 32")
        #expect(Set(net.throughput.map(\.batch)) == [1, 32])
        for t in net.throughput {
            #expect(t.perSecond > 0 && t.frames == 2 * 256, "\(t.mode) batch \(t.batch)")
            #expect((t.overUserspace == nil) == (t.mode == "userspace"))
        }
        #expect(Set(net.ratios.map(\.name)).isSuperset(of: ["irqfd p50 / floor p50", "irqfd p50 / userspace p50"]))
        for r in net.ratios {
            #expect(r.ratio.rounds == net.rounds && r.ratio.low <= r.ratio.median && r.ratio.median <= r.ratio.high)
        }
        #expect(net.tscKHz > 0)
        var report = try BenchRunner(options: BenchOptions(quick: true, sections: [])).run()
        report.virtioNet = net
        let text = ReportText.renderVirtioNet(report).joined(separator: "\n")
        #expect(text.contains("virtio-net on dpdk-testpmd") && text.contains("floor (host kick -> receive call)"))
        let json = String(decoding: try report.jsonData(), as: UTF8.self)
        #expect(json.contains("\"virtio_net\"") && json.contains("\"tsc_khz\""))
        print(text)
    }
}
#endif
