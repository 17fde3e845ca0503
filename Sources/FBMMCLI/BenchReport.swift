import Foundation

/// One line of results.json / results.csv: a metric of a workload in one
/// variant (native or a policy), summarised over the repetitions.
struct BenchRow: Codable, Sendable {
    struct Spread: Codable, Sendable { var min: Double; var max: Double; var q1: Double; var q3: Double }

    var workload: String
    var policy: String
    var metric: String
    var value: Double              // median
    var ratioToNative: Double      // median / native median, same run; 1 for native
    var spread: Spread
    var unit: String
    var repetitions: Int
    var better: String             // "higher" or "lower"
    var allocator: String          // "system" or "jemalloc" (both for native and the policies)
    var values: [Double]
    /// Why some run of this variant fell back to ordinary memory (its
    /// numbers are then not the policy's); nil when every run was in the mount.
    var fellBack: String? = nil
    /// The daemon's CPU time per run (median, ms): work done for the program
    /// off its own threads (pool zeroing, copy-on-write, tiering).
    var daemonCPUMilliseconds: Double? = nil

    enum CodingKeys: String, CodingKey {
        case workload, policy, metric, value, ratioToNative = "ratio_to_native", spread, unit, repetitions,
             better, allocator, values, fellBack = "fell_back", daemonCPUMilliseconds = "daemon_cpu_ms"
    }
}

/// Samples of one (workload, variant, metric).
struct BenchSamples {
    var unit: String
    var higherIsBetter: Bool
    var values: [Double] = []
}

enum BenchStatistics {
    static func median(_ values: [Double]) -> Double { quantile(values, 0.5) }

    /// Linear interpolation between order statistics (R type 7).
    static func quantile(_ values: [Double], _ q: Double) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        let position = q * Double(sorted.count - 1)
        let low = Int(position.rounded(.down)), high = Int(position.rounded(.up))
        return sorted[low] + (sorted[high] - sorted[low]) * (position - Double(low))
    }
}

/// Turns the samples into rows, the table, CSV, markdown and the chart.
struct BenchReport {
    var workloads: [String]                 // in run order
    var variants: [String]                  // "native" first
    var metricOrder: [String: [String]]     // workload -> metric names, headline first
    var rows: [BenchRow]
    var skipped: [(String, String)]
    /// Variant -> why a run of it fell back (see BenchCommand's check).
    var fallbacks: [String: String]
    /// key(workload, variant, "") -> the daemon's CPU ms of each run.
    var daemonCPU: [String: [Double]]

    init(workloads: [String], variants: [String], metricOrder: [String: [String]],
         samples: [String: BenchSamples], allocators: [String: String], skipped: [(String, String)],
         fallbacks: [String: String] = [:], daemonCPU: [String: [Double]] = [:]) {
        self.fallbacks = fallbacks
        self.daemonCPU = daemonCPU
        self.workloads = workloads
        self.variants = variants
        self.metricOrder = metricOrder
        self.skipped = skipped
        var rows = [BenchRow]()
        for workload in workloads {
            for metric in metricOrder[workload] ?? [] {
                guard let native = samples[Self.key(workload, "native", metric)], !native.values.isEmpty else { continue }
                let nativeMedian = BenchStatistics.median(native.values)
                for variant in variants {
                    guard let s = samples[Self.key(workload, variant, metric)], !s.values.isEmpty else { continue }
                    let median = BenchStatistics.median(s.values)
                    let ratio = variant == "native" ? 1.0 : (nativeMedian != 0 ? median / nativeMedian : .nan)
                    rows.append(BenchRow(
                        workload: workload, policy: variant, metric: metric, value: median, ratioToNative: ratio,
                        spread: .init(min: s.values.min()!, max: s.values.max()!,
                                      q1: BenchStatistics.quantile(s.values, 0.25), q3: BenchStatistics.quantile(s.values, 0.75)),
                        unit: s.unit, repetitions: s.values.count, better: s.higherIsBetter ? "higher" : "lower",
                        allocator: allocators[workload] ?? "system", values: s.values,
                        fellBack: fallbacks[variant],
                        daemonCPUMilliseconds: daemonCPU[Self.key(workload, variant, "")].map(BenchStatistics.median)))
                }
            }
        }
        self.rows = rows
    }

    static func key(_ workload: String, _ variant: String, _ metric: String) -> String {
        "\(workload)\u{1}\(variant)\u{1}\(metric)"
    }

    func row(_ workload: String, _ variant: String, _ metric: String) -> BenchRow? {
        rows.first { $0.workload == workload && $0.policy == variant && $0.metric == metric }
    }

    // MARK: text

    static func number(_ value: Double) -> String {
        if value.isNaN { return "-" }
        let magnitude = abs(value)
        if magnitude >= 100_000 { return String(format: "%.0f", value) }
        if magnitude >= 100 { return String(format: "%.1f", value) }
        if magnitude >= 1 { return String(format: "%.3f", value) }
        return String(format: "%.4g", value)
    }

    static func ratio(_ value: Double) -> String { value.isNaN ? "-" : String(format: "%.2f", value) }

    /// The spread of a variant's repetitions as ratios to native's median
    /// (what the table's [min-max] and the chart's error bars show).
    static func ratioRange(_ r: BenchRow, native: BenchRow) -> (low: Double, high: Double) {
        guard native.value != 0 else { return (.nan, .nan) }
        return (r.spread.min / native.value, r.spread.max / native.value)
    }

    /// Cells: metric name, unit, native median [min-max], then for each
    /// policy its ratio to native with the ratio range of its repetitions.
    func tableCells() -> (header: [String], lines: [[String]]) {
        var header = ["workload", "metric", "native (median [min-max])"]
        for variant in variants.dropFirst() {
            header.append("\(variant)\(fallbacks[variant] == nil ? "" : " (FELL BACK)") ratio [min-max]")
        }
        var lines = [[String]]()
        for workload in workloads {
            for metric in metricOrder[workload] ?? [] {
                guard let native = row(workload, "native", metric) else { continue }
                let arrow = native.better == "higher" ? "↑" : "↓"
                var line = [workload, "\(metric) \(arrow)",
                            "\(Self.number(native.value)) \(native.unit) [\(Self.number(native.spread.min))-\(Self.number(native.spread.max))]"]
                for variant in variants.dropFirst() {
                    guard let r = row(workload, variant, metric) else { line.append("-"); continue }
                    let range = Self.ratioRange(r, native: native)
                    line.append("\(Self.ratio(r.ratioToNative)) [\(Self.ratio(range.low))-\(Self.ratio(range.high))]")
                }
                lines.append(line)
            }
            if variants.dropFirst().contains(where: { daemonCPU[Self.key(workload, $0, "")] != nil }) {
                var line = [workload, "daemon CPU per run ↓", "-"]
                for variant in variants.dropFirst() {
                    line.append(daemonCPU[Self.key(workload, variant, "")].map { String(format: "%.0f ms", BenchStatistics.median($0)) } ?? "-")
                }
                lines.append(line)
            }
        }
        return (header, lines)
    }

    func textTable() -> String {
        let (header, lines) = tableCells()
        var widths = header.map { $0.count }
        for line in lines { for (i, cell) in line.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func format(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        var text = format(header) + "\n" + format(widths.map { String(repeating: "-", count: $0) }) + "\n"
        for line in lines { text += format(line) + "\n" }
        text += "ratio = policy median / native median in the same run (↑ higher is better, ↓ lower is better)\n"
        text += "daemon CPU: the mount's daemon's CPU time during each run (median), spent for the program off its threads\n"
        for variant in variants.dropFirst() {
            if let reason = fallbacks[variant] {
                text += "FELL BACK \(variant): some of its runs used ordinary memory (\(reason)); its numbers are not the policy's\n"
            }
        }
        for (workload, reason) in skipped { text += "skipped \(workload): \(reason)\n" }
        return text
    }

    func markdownTable() -> String {
        let (header, lines) = tableCells()
        var text = "| " + header.joined(separator: " | ") + " |\n"
        text += "|" + header.map { _ in "---|" }.joined() + "\n"
        for line in lines { text += "| " + line.joined(separator: " | ") + " |\n" }
        return text
    }

    func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try encoder.encode(rows)
    }

    func csv() -> String {
        func field(_ text: String) -> String {
            text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" })
                ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
        }
        var text = "workload,policy,metric,value,ratio_to_native,spread_min,spread_max,spread_q1,spread_q3,unit,repetitions,better,allocator\n"
        for r in rows {
            text += [field(r.workload), field(r.policy), field(r.metric), "\(r.value)", "\(r.ratioToNative)",
                     "\(r.spread.min)", "\(r.spread.max)", "\(r.spread.q1)", "\(r.spread.q3)", field(r.unit),
                     "\(r.repetitions)", r.better, r.allocator].joined(separator: ",") + "\n"
        }
        return text
    }

    // MARK: chart

    static func xml(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// Grouped bars: for each workload its headline metric, one bar per
    /// policy with its ratio to native and an error bar over its
    /// repetitions' range; a line at 1.0 (native). Every label is given
    /// room by an estimate of its width (sans-serif runs ~0.6 em a
    /// character), so that nothing is drawn outside the canvas.
    func svg() -> String {
        let policies = Array(variants.dropFirst())
        let palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
        func textWidth(_ text: String, size: Double = 12, bold: Bool = false) -> Double {
            Double(text.count) * size * (bold ? 0.68 : 0.62)
        }
        let title = "fbmm bench: ratio to native (headline metric per workload, medians, min-max bars)"
        let headline = workloads.map { ($0, metricOrder[$0]?.first ?? "") }
        let legendLabels = policies.map { "\($0)\(fallbacks[$0] == nil ? "" : " (FELL BACK)")" }
        let widestLabel = headline.map { max(textWidth($0.0), textWidth("\($0.1) ↑")) }.max() ?? 0
        let barWidth = 22.0, groupGap = 28.0
        let minimumGroup = max(Double(max(policies.count, 1)) * barWidth + groupGap, widestLabel + 12)
        let left = 70.0, top = 50.0, plotHeight = 260.0, bottom = 80.0
        let legendWidth = max(30.0 + (legendLabels.map { textWidth($0) }.max() ?? 40), textWidth("native = 1.0") + 10)
        let xTitle = "workload: metric (↑ higher is better, ↓ lower is better)"
        let plotWidth = max(Double(workloads.count) * minimumGroup, 200.0, textWidth(xTitle) + 20)
        let groupWidth = plotWidth / Double(max(workloads.count, 1))  // groups spread over the plot
        let width = max(left + plotWidth + 20 + legendWidth, left + textWidth(title, size: 15, bold: true) + 20)
        let height = top + plotHeight + bottom
        var highest = 1.0
        for (workload, metric) in headline {
            guard let native = row(workload, "native", metric) else { continue }
            for policy in policies {
                guard let r = row(workload, policy, metric) else { continue }
                for v in [r.ratioToNative, Self.ratioRange(r, native: native).high] where v.isFinite { highest = max(highest, v) }
            }
        }
        var yMax = max(1.2, (highest * 1.1 * 5).rounded(.up) / 5)
        if yMax > 5 { yMax = (yMax).rounded(.up) }
        let tickStep = yMax <= 1.6 ? 0.2 : (yMax <= 3 ? 0.5 : 1.0)
        func y(_ value: Double) -> Double { top + plotHeight - min(value, yMax) / yMax * plotHeight }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }

        var s = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(f(width))" height="\(f(height))" viewBox="0 0 \(f(width)) \(f(height))" font-family="sans-serif" font-size="12">
            <title>fbmm bench: each policy's ratio to native, same run</title>
            <rect x="0" y="0" width="\(f(width))" height="\(f(height))" fill="white"/>
            <text x="\(f(left))" y="22" font-size="15" font-weight="bold">\(Self.xml(title))</text>

            """
        // Axes, ticks and grid.
        var tick = 0.0
        while tick <= yMax + 1e-9 {
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y(tick)))\" x2=\"\(f(left + plotWidth))\" y2=\"\(f(y(tick)))\" stroke=\"#e0e0e0\"/>\n"
            s += "<text x=\"\(f(left - 6))\" y=\"\(f(y(tick) + 4))\" text-anchor=\"end\">\(String(format: "%.1f", tick))</text>\n"
            tick += tickStep
        }
        s += "<line x1=\"\(f(left))\" y1=\"\(f(top))\" x2=\"\(f(left))\" y2=\"\(f(top + plotHeight))\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(f(left))\" y1=\"\(f(top + plotHeight))\" x2=\"\(f(left + plotWidth))\" y2=\"\(f(top + plotHeight))\" stroke=\"black\"/>\n"
        s += "<text transform=\"translate(18,\(f(top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">ratio to native</text>\n"
        s += "<text x=\"\(f(left + plotWidth / 2))\" y=\"\(f(height - 12))\" text-anchor=\"middle\">\(Self.xml(xTitle))</text>\n"
        // Bars.
        for (g, (workload, metric)) in headline.enumerated() {
            let x0 = left + Double(g) * groupWidth + (groupWidth - Double(policies.count) * barWidth) / 2
            for (p, policy) in policies.enumerated() {
                guard let r = row(workload, policy, metric), r.ratioToNative.isFinite else { continue }
                let x = x0 + Double(p) * barWidth
                let barTop = y(r.ratioToNative)
                s += "<rect class=\"bar\" data-workload=\"\(Self.xml(workload))\" data-policy=\"\(Self.xml(policy))\" data-metric=\"\(Self.xml(metric))\" "
                s += "x=\"\(f(x))\" y=\"\(f(barTop))\" width=\"\(f(barWidth - 3))\" height=\"\(f(top + plotHeight - barTop))\" fill=\"\(palette[p % palette.count])\">"
                s += "<title>\(Self.xml("\(workload) \(metric), \(policy): \(Self.ratio(r.ratioToNative)) x native (\(Self.number(r.value)) \(r.unit))"))</title></rect>\n"
                if let native = row(workload, "native", metric) {
                    let range = Self.ratioRange(r, native: native)
                    if range.low.isFinite && range.high.isFinite {
                        let cx = x + (barWidth - 3) / 2, lo = y(range.low), hi = y(range.high)
                        s += "<path class=\"spread\" d=\"M\(f(cx)) \(f(lo)) V\(f(hi)) M\(f(cx - 4)) \(f(lo)) H\(f(cx + 4)) M\(f(cx - 4)) \(f(hi)) H\(f(cx + 4))\" "
                        s += "stroke=\"black\" stroke-width=\"1.2\" fill=\"none\"/>\n"
                    }
                }
            }
            let arrow = (row(workload, "native", metric)?.better ?? "higher") == "higher" ? "↑" : "↓"
            let cx = x0 + Double(policies.count) * barWidth / 2
            s += "<text x=\"\(f(cx))\" y=\"\(f(top + plotHeight + 16))\" text-anchor=\"middle\">\(Self.xml(workload))</text>\n"
            s += "<text x=\"\(f(cx))\" y=\"\(f(top + plotHeight + 30))\" text-anchor=\"middle\" fill=\"#555\">\(Self.xml(metric)) \(arrow)</text>\n"
        }
        // Native = 1.0.
        s += "<line class=\"native\" x1=\"\(f(left))\" y1=\"\(f(y(1)))\" x2=\"\(f(left + plotWidth))\" y2=\"\(f(y(1)))\" stroke=\"black\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>\n"
        s += "<text x=\"\(f(left + plotWidth + 6))\" y=\"\(f(y(1) + 4))\">native = 1.0</text>\n"  // beside the plot, clear of the bars
        // Legend.
        let lx = left + plotWidth + 20
        for p in policies.indices {
            let ly = top + Double(p) * 20
            s += "<rect class=\"legend\" x=\"\(f(lx))\" y=\"\(f(ly))\" width=\"12\" height=\"12\" fill=\"\(palette[p % palette.count])\"/>\n"
            s += "<text x=\"\(f(lx + 18))\" y=\"\(f(ly + 10))\">\(Self.xml(legendLabels[p]))</text>\n"
        }
        s += "</svg>\n"
        return s
    }
}
