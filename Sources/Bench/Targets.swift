/// The performance targets, each a ratio of a library path to its kernel
/// floor measured in the same run (the Benchmark article, "Targets").
public enum Targets {
    /// Path names, shared by the runner, the table and the picture.
    public enum Path {
        /// The KVM backend's routes: kernel irqfd.
        public static let irqfd = "irqfd"
        /// The relay backend: an epoll thread injecting with KVM_SIGNAL_MSI.
        public static let relay = "relay"
        /// The MSI-X emulator's userspace path: the device thread injects with KVM_SIGNAL_MSI.
        public static let userspace = "userspace"
        /// Floor of `irqfd`: GSI route and KVM_IRQFD made by direct ioctls, eventfd written from C.
        public static let raw = "raw"
        /// Floor of `relay`: a C thread in epoll_wait that reads the eventfd and calls KVM_SIGNAL_MSI.
        public static let rawRelay = "raw_relay"
        /// Floor of `userspace`: KVM_SIGNAL_MSI called from C on the device thread.
        public static let rawSignalMsi = "raw_signal_msi"

        /// Each library path's floor.
        public static let floors: [String: String] = [irqfd: raw, relay: rawRelay, userspace: rawSignalMsi]
        /// The order paths are measured and shown in.
        public static let all = [irqfd, raw, relay, rawRelay, userspace, rawSignalMsi]
    }

    /// The N at which programming is held to its target.
    public static let programmingN = 2048

    /// The checks. Every ratio is paired (path and floor measured in
    /// alternating rounds; the median of the per-round ratios), and a target is met only when its 95% bootstrap
    /// interval's upper end is under the limit.
    public static func check(_ report: BenchReport) -> [BenchReport.TargetCheck] {
        var checks: [BenchReport.TargetCheck] = []
        /// A path's paired ratio, only when its floor is in the report too.
        func paired(_ path: String) -> BenchReport.PairedRatio? {
            guard let floor = Path.floors[path], report.delivery(floor) != nil else { return nil }
            return report.delivery(path)?.p50Ratio
        }
        let irqfd = report.delivery(Path.irqfd)
        checks.append(
            .init(
                name: "irqfd delivery p50 / raw p50", paired: paired(Path.irqfd), limit: 1.05,
                note: "the kernel path: no library code runs between the signal and the guest"))
        let relay = report.delivery(Path.relay)
        var relayNote = "against a C relay (epoll thread + KVM_SIGNAL_MSI)"
        if let relay, let irqfd {
            relayNote += String(
                format: "; relay costs %+.1f µs at p50 over irqfd", relay.latency.p50Us - irqfd.latency.p50Us)
        }
        checks.append(
            .init(name: "relay delivery p50 / C relay p50", paired: paired(Path.relay), limit: 1.10, note: relayNote))
        let program = report.programming.first { $0.routes == programmingN }
        checks.append(
            .init(
                name: "retarget \(programmingN) in one batch / one raw push of \(programmingN)",
                paired: program?.retargetRatio, limit: 1.2,
                note:
                    "new MSIs for \(programmingN) live routes in one batch (one push, nothing else) against one C push of \(programmingN) entries"
            ))
        checks.append(
            .init(
                name: "drop \(programmingN) in one batch / C drop", paired: program?.dropRatio, limit: 1.3,
                note: "against C: \(programmingN) KVM_IRQFD deassigns, \(programmingN) closes, one push"))
        checks.append(
            .init(
                name: "\(programmingN) setMsiDeferred outside a batch / C served floor",
                paired: program?.deferredServedRatio, limit: 1.3,
                note: program.flatMap(deferredNote) ?? "not measured"))
        let mask = report.maskUnmask
        checks.append(
            .init(
                name: "mask+unmask / raw KVM_IRQFD deassign+assign", paired: mask?.ratio, limit: 1.2,
                note: mask.map { "\($0.pushes) table pushes in \($0.cycles) library cycles" } ?? "not measured"))
        return checks
    }

    /// What the deferred target's floor is, and the other floors it was held
    /// to before: any path must make one push and N `KVM_IRQFD` assigns (the
    /// C push + arms floor), and the routing core also serves each waiting
    /// route meanwhile (an `epoll_ctl` ADD and DEL each: the served floor).
    /// One raw push alone is below what any path can do on this kernel.
    static func deferredNote(_ program: BenchReport.Programming) -> String? {
        program.oneByOneDeferredPushes.map { pushes in
            var note = "until every route is armed; \(pushes) pushes"
            note +=
                "; the served floor: one C push + \(programmingN) KVM_IRQFD assigns, each route watched by epoll until armed"
            if let arm = program.deferredArmRatio {
                note += "; \(ReportText.paired(arm)) of the C push + assigns alone"
            }
            if let raw = program.deferredRatio {
                note += "; \(ReportText.paired(raw)) of one raw push"
            }
            return note
        }
    }

    /// a / b, or nil when either is missing or b is not positive.
    public static func ratio(_ a: Double?, _ b: Double?) -> Double? {
        guard let a, let b, b > 0 else { return nil }
        return a / b
    }
}
