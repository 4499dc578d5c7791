import Foundation

/// A line chart drawn as SVG: axes with ticks (linear or log10), one
/// polyline per series, a legend. No dependencies: the output is plain text.
public struct SVGChart: Sendable {
    /// One line.
    public struct Series: Sendable {
        /// Legend text.
        public var name: String
        /// Stroke colour (any SVG colour).
        public var color: String
        /// Points in data coordinates, drawn in order.
        public var points: [(x: Double, y: Double)]
        /// Dashed stroke (used for the C floors).
        public var dashed = false
        /// Draw a dot at each point.
        public var markers = false
    }

    /// Chart title.
    public var title: String
    /// X axis label.
    public var xLabel: String
    /// Y axis label.
    public var yLabel: String
    /// Log10 x axis.
    public var xLog: Bool
    /// Log10 y axis.
    public var yLog: Bool
    /// Fixed y range (else from the data).
    public var yRange: ClosedRange<Double>?
    /// The lines.
    public var series: [Series]

    /// The chart as an SVG `<g>` element occupying `width` x `height` at (`x`, `y`).
    public func render(x originX: Double, y originY: Double, width: Double, height: Double) -> String {
        let left = originX + 70
        let right = originX + width - 240
        let top = originY + 36
        let bottom = originY + height - 46
        let usable = series.filter { !$0.points.isEmpty }
        let xs = usable.flatMap { $0.points.map(\.x) }.filter { !xLog || $0 > 0 }
        let ys = usable.flatMap { $0.points.map(\.y) }.filter { !yLog || $0 > 0 }
        let xAxis = Axis(values: xs, log: xLog, fixed: nil)
        let yAxis = Axis(values: ys, log: yLog, fixed: yRange)
        func px(_ v: Double) -> Double { left + xAxis.position(v) * (right - left) }
        func py(_ v: Double) -> Double { bottom - yAxis.position(v) * (bottom - top) }

        var out = "<g>\n"
        out += text(originX + width / 2, originY + 20, title, anchor: "middle", size: 15, weight: "bold")
        out +=
            "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(right - left))\" height=\"\(f(bottom - top))\" fill=\"none\" stroke=\"#444\"/>\n"
        for tick in xAxis.ticks {
            let p = px(tick.value)
            out += "<line x1=\"\(f(p))\" y1=\"\(f(top))\" x2=\"\(f(p))\" y2=\"\(f(bottom))\" stroke=\"#ddd\"/>\n"
            if tick.labelled { out += text(p, bottom + 16, Axis.label(tick.value), anchor: "middle", size: 11) }
        }
        for tick in yAxis.ticks {
            let p = py(tick.value)
            out += "<line x1=\"\(f(left))\" y1=\"\(f(p))\" x2=\"\(f(right))\" y2=\"\(f(p))\" stroke=\"#ddd\"/>\n"
            if tick.labelled { out += text(left - 6, p + 4, Axis.label(tick.value), anchor: "end", size: 11) }
        }
        out += text((left + right) / 2, bottom + 36, xLabel, anchor: "middle", size: 12)
        let yMid = (top + bottom) / 2
        out +=
            "<text x=\"\(f(originX + 16))\" y=\"\(f(yMid))\" text-anchor=\"middle\" font-size=\"12\" font-family=\"sans-serif\" transform=\"rotate(-90 \(f(originX + 16)) \(f(yMid)))\">\(Self.escape(yLabel))</text>\n"
        for s in usable {
            let points = s.points.filter { (!xLog || $0.x > 0) && (!yLog || $0.y > 0) }
            guard !points.isEmpty else { continue }
            let list = points.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
            let dash = s.dashed ? " stroke-dasharray=\"6 4\"" : ""
            out +=
                "<polyline fill=\"none\" stroke=\"\(Self.escape(s.color))\" stroke-width=\"2\"\(dash) points=\"\(list)\"/>\n"
            if s.markers {
                for p in points {
                    out +=
                        "<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"3\" fill=\"\(Self.escape(s.color))\"/>\n"
                }
            }
        }
        for (i, s) in usable.enumerated() {
            let ly = top + 10 + Double(i) * 20
            let dash = s.dashed ? " stroke-dasharray=\"6 4\"" : ""
            out +=
                "<line x1=\"\(f(right + 14))\" y1=\"\(f(ly))\" x2=\"\(f(right + 40))\" y2=\"\(f(ly))\" stroke=\"\(Self.escape(s.color))\" stroke-width=\"2\"\(dash)/>\n"
            out += text(right + 46, ly + 4, s.name, anchor: "start", size: 12)
        }
        return out + "</g>\n"
    }

    private func text(_ x: Double, _ y: Double, _ content: String, anchor: String, size: Int, weight: String = "normal")
        -> String
    {
        "<text x=\"\(f(x))\" y=\"\(f(y))\" text-anchor=\"\(anchor)\" font-size=\"\(size)\" font-weight=\"\(weight)\" font-family=\"sans-serif\">\(Self.escape(content))</text>\n"
    }

    private func f(_ v: Double) -> String { ReportText.format(v, 1) }

    /// `s` with XML's five special characters escaped.
    public static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(c)
            }
        }
        return out
    }

    /// Maps data values to 0...1 along an axis and picks its ticks.
    struct Axis {
        let low: Double
        let high: Double
        let log: Bool

        init(values: [Double], log: Bool, fixed: ClosedRange<Double>?) {
            self.log = log
            var lo = fixed?.lowerBound ?? values.min() ?? (log ? 1 : 0)
            var hi = fixed?.upperBound ?? values.max() ?? (log ? 10 : 1)
            if log {
                lo = Self.pow10(Self.floorLog10(max(lo, 1e-9)))
                hi = Self.pow10(Self.ceilLog10(max(hi, lo * 10)))
                if hi <= lo { hi = lo * 10 }
            } else if hi <= lo {
                hi = lo + 1
            }
            low = lo
            high = hi
        }

        func position(_ v: Double) -> Double {
            let p =
                log
                ? (Self.log10(max(v, low)) - Self.log10(low)) / (Self.log10(high) - Self.log10(low))
                : (v - low) / (high - low)
            return min(1, max(0, p))
        }

        var ticks: [(value: Double, labelled: Bool)] {
            if log {
                let decades = Int((Self.log10(high) - Self.log10(low)).rounded())
                var ticks: [(Double, Bool)] = []
                var decade = low
                for _ in 0...decades {
                    for m in [1.0, 2, 5] where decade * m <= high * 1.0001 {
                        ticks.append((decade * m, m == 1 || decades <= 3))
                    }
                    decade *= 10
                }
                return ticks
            }
            return (0...5).map { (low + (high - low) * Double($0) / 5, true) }
        }

        static func label(_ v: Double) -> String {
            if v >= 1_000_000, v.truncatingRemainder(dividingBy: 1_000_000) == 0 { return "\(Int(v / 1_000_000))M" }
            if v >= 1000, v.truncatingRemainder(dividingBy: 1000) == 0 { return "\(Int(v / 1000))k" }
            if v == v.rounded() { return String(Int(v)) }
            return ReportText.format(v, v < 0.1 ? 2 : 1)
        }

        static func log10(_ v: Double) -> Double { Foundation.log10(v) }
        static func floorLog10(_ v: Double) -> Int { Int((log10(v) + 1e-9).rounded(.down)) }
        static func ceilLog10(_ v: Double) -> Int { Int((log10(v) - 1e-9).rounded(.up)) }
        static func pow10(_ e: Int) -> Double { Foundation.pow(10, Double(e)) }
    }
}

/// The `--svg` picture: delivery latency CDFs and route programming against N.
public enum BenchSVG {
    /// Colours per path; floors are drawn dashed in their library path's colour.
    static let colors: [String: String] = [
        Targets.Path.irqfd: "#1f77b4", Targets.Path.raw: "#1f77b4",
        Targets.Path.relay: "#d62728", Targets.Path.rawRelay: "#d62728",
        Targets.Path.userspace: "#2ca02c", Targets.Path.rawSignalMsi: "#2ca02c",
    ]

    /// The whole picture, a standalone SVG document.
    public static func render(_ report: BenchReport) -> String {
        let width = 960.0
        let panel = 420.0
        let latency = SVGChart(
            title: "Delivery latency (device signal -> guest handler ran), CDF",
            xLabel: "latency, µs (log scale)", yLabel: "fraction of samples at or below",
            xLog: true, yLog: false, yRange: 0...1,
            series: report.delivery.map { d in
                SVGChart.Series(
                    name: "\(d.path)  p50 \(ReportText.us(d.latency.p50Us)) µs",
                    color: colors[d.path] ?? "#555",
                    points: d.latency.cdf.map { ($0.us, $0.fraction) },
                    dashed: d.floor == nil)
            })
        let programming = report.programming.sorted { $0.routes < $1.routes }
        /// A series over the N that have `value` measured.
        func line(
            _ name: String, _ color: String, dashed: Bool = false, _ value: (BenchReport.Programming) -> Double?
        ) -> SVGChart.Series {
            let points = programming.compactMap { p in value(p).map { (x: Double(p.routes), y: $0) } }
            return SVGChart.Series(name: name, color: color, points: points, dashed: dashed, markers: true)
        }
        let program = SVGChart(
            title: "Route programming time against N",
            xLabel: "routes N (log scale)", yLabel: "µs (log scale)",
            xLog: true, yLog: true,
            series: [
                // One at a time, as a guest unmasks: synchronous setMsi pushes a growing table each
                // time (O(N²) by design); setMsiDeferred on a coalescing partition, which the MSI-X
                // emulator uses, shares pushes and is timed until every route is armed.
                line("one by one, synchronous", "#d62728") { $0.oneByOneUs },
                line("one by one, coalesced", "#ff7f0e") { $0.oneByOneDeferredUs },
                line("one batch (create)", "#1f77b4") { $0.batchedUs },
                line("C: create", "#1f77b4", dashed: true) { $0.rawProgramUs },
                line("one batch (retarget)", "#2ca02c") { $0.retargetBatchedUs },
                line("C: one push of N", "#2ca02c", dashed: true) { $0.rawPushUs },
            ])
        let extra = vhostUserCharts(report)
        let panels = Double(2 + extra.count)
        var svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        svg +=
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(panel * panels + 30))\" viewBox=\"0 0 \(Int(width)) \(Int(panel * panels + 30))\">\n"
        svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        svg += latency.render(x: 0, y: 0, width: width, height: panel)
        svg += program.render(x: 0, y: panel, width: width, height: panel)
        for (i, chart) in extra.enumerated() {
            svg += chart.render(x: 0, y: panel * Double(2 + i), width: width, height: panel)
        }
        let m = report.machine
        svg +=
            "<text x=\"10\" y=\"\(Int(panel * panels + 20))\" font-size=\"11\" font-family=\"sans-serif\" fill=\"#555\">"
        svg += SVGChart.escape("irqfd bench, kernel \(m.kernel), \(m.cpus) CPUs, \(m.date); dashed lines: the C floors")
        svg += "</text>\n</svg>\n"
        return svg
    }
}
