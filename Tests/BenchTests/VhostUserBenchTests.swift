#if os(Linux)
import Bench
import Foundation
import TestSupport
import Virtio
import Testing

/// Whether the launcher finds qemu-storage-daemon (its parts of the section are skipped otherwise).
private let qemuStorageDaemonInstalled = DiskBackendKind.qemuStorageDaemonPath != nil

/// `irqfd bench --only vhost-user --quick` on the real /dev/kvm and real
/// back-ends: every part measures what it says and lands in the JSON. Not
/// how fast (that is the benchmark's job): no timing thresholds here.
@Suite(needsKVM) struct VhostUserBenchTests {
    @Test func quickSectionMeasuresEveryModeAndWritesItsJSONKeys() throws {
        let report = try BenchRunner(options: BenchOptions(quick: true, sections: [.vhostUser])).run()
        let v = try #require(report.vhostUser)
        let kinds = v.backends.map(\.backend)
        #expect(kinds.contains("embedded"), "the embedded back-end is built with the package")
        if qemuStorageDaemonInstalled {
            #expect(kinds.first == "qemu-storage-daemon")
        } else {
            print("VhostUserBenchTests: qemu-storage-daemon is not installed: its parts are checked as skipped")
            #expect(v.skipped.contains { $0.contains("qemu-storage-daemon is not installed") })
            #expect(v.maskUnmask == nil)
        }
        // Quick: 6 rounds of 60 requests per side, 2 throughput rounds of 200.
        for b in v.backends {
            #expect(b.latency.map(\.mode) == ["irqfd", "relay", "userspace"], "\(b.backend)")
            for m in b.latency {
                let l = m.latency
                #expect(l.samples == v.rounds * 60, "\(b.backend) \(m.mode)")
                #expect(
                    l.minUs > 0 && l.p50Us <= l.p99Us && l.p99Us <= l.p999Us && l.p999Us <= l.maxUs,
                    "\(b.backend) \(m.mode)")
                #expect(m.failed == 0, "\(b.backend) \(m.mode): every read completes with status 0")
            }
            #expect(b.floor.samples == v.rounds * 60 && b.floor.minUs > 0, "\(b.backend) floor")
            #expect(b.throughput.count == 9, "3 modes x depths 1, 8, 32")
            #expect(Set(b.throughput.map(\.depth)) == [1, 8, 32])
            for t in b.throughput {
                #expect(t.perSecond > 0 && t.requests == 2 * 200, "\(b.backend) \(t.mode) depth \(t.depth)")
                #expect((t.overUserspace == nil) == (t.mode == "userspace"))
            }
            #expect(
                Set(b.ratios.map(\.name)).isSuperset(of: [
                    "irqfd_p50_over_budget", "irqfd_over_userspace_p50", "irqfd_over_userspace_p99",
                ]))
            for r in b.ratios {
                #expect(
                    r.ratio.rounds == v.rounds && r.ratio.low <= r.ratio.median && r.ratio.median <= r.ratio.high,
                    "\(r.name)")
            }
        }
        #expect(v.rawIrqfd.samples == v.backends.count * v.rounds * 60)
        #expect(v.tscKHz > 0)
        // The guest's TSC span of a round lies inside the host's (gate opened -> round seen done).
        #expect(v.tscCheck > 0 && v.tscCheck < 1.05, "guest/host clock \(v.tscCheck)")
        if let mask = v.maskUnmask {
            #expect(mask.oursMessagesPerCycle == 0, "ours sends no vhost-user message")
            #expect(mask.oursIrqfdCallsPerCycle == 2, "one KVM_IRQFD deassign + one assign")
            #expect(mask.qemuMessagesPerCycle == 2, "QEMU's: two SET_VRING_CALL")
            #expect(mask.replyAck, "qemu-storage-daemon offers REPLY_ACK: each message is a round trip")
            #expect(mask.oursUs > 0 && mask.qemuStrategyUs > 0 && mask.oursOverQemu != nil)
            #expect((mask.rawUs ?? 0) > 0 && mask.oursOverRaw != nil, "the C floor of ours, same VM")
            let back = try #require(mask.backToBack)
            #expect(back.oursUs > 0 && back.qemuStrategyUs > 0 && back.rawUs > 0 && back.oursOverQemu != nil)
        }
        // Every target is checked in this run, and lands in the report's targets too.
        #expect(
            v.targets.count == 2 * v.backends.count + (v.maskUnmask == nil ? 0 : 2),
            "2 per back-end (irqfd / userspace at p50, p99), 2 for mask + unmask (isolated, back to back)")
        #expect(
            !v.targets.contains { $0.name.contains("budget") || $0.name.contains("floor p50 +") },
            "no latency budget target")
        for t in v.targets {
            #expect(t.met != nil, "\(t.name)")
            #expect(report.targets.contains(t))
            #expect(v.targetRatios.contains { $0.name == t.name }, "\(t.name) has its paired interval")
        }

        // The JSON: the section's keys, and it reads back equal.
        let section = try checkedSection(
            "vhost_user", of: report,
            keys: ["backends", "raw_irqfd", "targets", "target_ratios", "skipped", "tsc_khz", "tsc_check", "rounds"])
        if v.maskUnmask != nil {
            let mask = try #require(section["mask_unmask"] as? [String: Any])
            for key in [
                "ours_us", "qemu_strategy_us", "qemu_over_ours", "ours_over_qemu", "reply_ack", "raw_us",
                "back_to_back",
            ] { #expect(mask[key] != nil, "mask_unmask.\(key)") }
        }
        let backend = try #require((section["backends"] as? [[String: Any]])?.first)
        for key in ["backend", "latency", "floor", "throughput", "ratios"] {
            #expect(backend[key] != nil, "backends[0].\(key)")
        }
        let latency = try #require((backend["latency"] as? [[String: Any]])?.first?["latency"] as? [String: Any])
        for key in ["p50_us", "p99_us", "p999_us", "cdf"] { #expect(latency[key] != nil, "latency.\(key)") }

        // The tables and the picture carry the section.
        let text = ReportText.render(report)
        #expect(text.contains("vhost-user virtio-blk request latency") && text.contains("vhost-user targets"))
        #expect(text.contains("requests/s"))
        let svg = BenchSVG.render(report)
        for b in v.backends { #expect(svg.contains("vhost-user (\(b.backend))"), "a latency CDF per back-end") }

        // virtio-fs: a FUSE READ of 4 KiB on virtiofsd per mode, against its host-driven floor.
        guard FileManager.default.isExecutableFile(atPath: "/usr/lib/qemu/virtiofsd") else {
            print("VhostUserBenchTests: virtiofsd is not installed: its part is checked as skipped")
            #expect(v.virtioFs == nil)
            #expect(v.skipped.contains { $0.contains("virtiofsd is not installed") })
            return
        }
        let fs = try #require(v.virtioFs)
        #expect(fs.latency.map(\.mode) == ["irqfd", "relay", "userspace"])
        for m in fs.latency {
            let l = m.latency
            #expect(l.samples == fs.rounds * fs.perRound, "virtio-fs \(m.mode)")
            #expect(l.minUs > 0 && l.p50Us <= l.p99Us && l.p99Us <= l.maxUs, "virtio-fs \(m.mode)")
        }
        #expect(fs.floor.samples == fs.rounds * fs.perRound && fs.floor.minUs > 0)
        for name in ["irqfd_p50_over_floor", "relay_p99_over_floor", "irqfd_over_userspace_p50"] {
            let ratio = try #require(fs.ratio(name), "\(name)")
            #expect(ratio.rounds == fs.rounds && ratio.low <= ratio.median && ratio.median <= ratio.high, "\(name)")
        }
        let fsSection = try #require(section["virtio_fs"] as? [String: Any])
        for key in ["latency", "floor", "ratios", "rounds", "per_round"] {
            #expect(fsSection[key] != nil, "virtio_fs.\(key)")
        }
        #expect(text.contains("vhost-user virtio-fs on virtiofsd: FUSE READ of 4 KiB"))
    }
}
#endif
