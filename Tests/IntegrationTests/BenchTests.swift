import Foundation
import Testing
#if canImport(FoundationXML)
import FoundationXML
#endif

#if canImport(Glibc)
import Glibc
#endif

/// `fbmm bench --quick`: real mounts, the project's own workloads natively and
/// under two policies. Checks the shape of what it writes, never its timings.
@Suite(.serialized)
struct BenchTests {
    static let workloads = ["gups", "stream", "churn", "latency"]
    static let policies = ["local", "interleave,nodes=0"]

    /// Counts `<rect class="bar">` elements and checks the document is well-formed XML.
    final class BarCounter: NSObject, XMLParserDelegate {
        var bars = [(workload: String, policy: String)]()
        var spreads = 0
        var rootName: String?
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?,
                    qualifiedName: String?, attributes: [String: String] = [:]) {
            if rootName == nil { rootName = name }
            if name == "rect", attributes["class"] == "bar" {
                bars.append((attributes["data-workload"] ?? "", attributes["data-policy"] ?? ""))
            }
            if name == "path", attributes["class"] == "spread" { spreads += 1 }
        }
    }

    /// A policy variant whose runs fell back to ordinary memory (a mount
    /// too small for the workload) is marked in the table and in the JSON,
    /// never reported as the policy's number.
    @Test func aVariantThatFellBackIsMarked() throws {
        try requireFUSE()
        let out = "/tmp/fbmm-bench-test-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let result = try run([Artefacts.fbmm, "bench", "--quick", "--repetitions", "1", "--workloads", "gups", "--size", "32M",
                              "--policy", "local,capacity=2M", "--out", out], timeout: 240)
        #expect(result.ok, "\(result.stderr.suffix(2000))")
        #expect(result.stdout.contains("FELL BACK local,capacity=2M"), "\(result.stdout)")
        #expect(result.stderr.contains("fell back to ordinary memory"), "\(result.stderr.suffix(2000))")
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(out)/results.json"))
        let rows = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        let policyRows = rows.filter { $0["policy"] as? String == "local,capacity=2M" }
        #expect(!policyRows.isEmpty && policyRows.allSatisfy { ($0["fell_back"] as? String)?.contains("falling back") == true },
                "\(policyRows)")
        // The legend says it too, and its longer label still fits.
        let chart = try String(contentsOfFile: "\(out)/chart.svg", encoding: .utf8)
        #expect(chart.contains("local,capacity=2M (FELL BACK)"), "the chart's legend marks the variant")
        try expectRendersInsideItsCanvas("\(out)/chart.svg")
    }

    @Test func quickBenchWritesResultsAndLeavesNothingMounted() throws {
        try requireFUSE()
        let workloadBinary = (Artefacts.fbmm as NSString).deletingLastPathComponent + "/fbmm-workload"
        try #require(FileManager.default.isExecutableFile(atPath: workloadBinary),
                     "fbmm-workload is not built at \(workloadBinary): run scripts/build.sh first")
        let out = "/tmp/fbmm-bench-test-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let mountsBefore = Set(fbmmMountPoints())

        var arguments = [Artefacts.fbmm, "bench", "--quick", "--workloads", Self.workloads.joined(separator: ","), "--out", out]
        for policy in Self.policies { arguments += ["--policy", policy] }
        let result = try run(arguments, timeout: 240)
        #expect(result.ok, "fbmm bench failed (\(result.status)): \(result.stderr.suffix(2000))")
        #expect(result.stderr.contains("bench ["), "progress goes to stderr")
        #expect(Set(fbmmMountPoints()).subtracting(mountsBefore).filter { $0.hasPrefix("/tmp/fbmm-bench-") }.isEmpty, "the bench unmounted everything it mounted")
        try #require(result.ok)

        // The table names every policy.
        for policy in Self.policies { #expect(result.stdout.contains(policy)) }

        // results.json: every workload x {native, policies}, with the documented keys.
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(out)/results.json"))
        let rows = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        let variants = ["native"] + Self.policies
        for row in rows {
            for key in ["workload", "policy", "metric", "value", "ratio_to_native", "spread", "unit", "repetitions"] {
                #expect(row[key] != nil, "row lacks \(key): \(row)")
            }
            let value = (row["value"] as? NSNumber)?.doubleValue ?? -1
            let ratio = (row["ratio_to_native"] as? NSNumber)?.doubleValue ?? -1
            #expect(value > 0 && value.isFinite, "positive value: \(row)")
            #expect(ratio > 0 && ratio.isFinite, "positive ratio: \(row)")
            if row["policy"] as? String == "native" { #expect(ratio == 1.0, "native rows are 1.0: \(row)") }
            #expect((row["repetitions"] as? Int ?? 0) >= 1)
            let spread = row["spread"] as? [String: Any]
            let low = (spread?["min"] as? NSNumber)?.doubleValue ?? .nan
            let high = (spread?["max"] as? NSNumber)?.doubleValue ?? .nan
            #expect(low <= value && value <= high, "median within min-max: \(row)")
            if row["policy"] as? String != "native" {
                #expect(row["fell_back"] == nil, "every policy run had its memory in the mount: \(row)")
                #expect(((row["daemon_cpu_ms"] as? NSNumber)?.doubleValue ?? -1) >= 0, "the daemon's CPU time is reported: \(row)")
            }
        }
        #expect(result.stdout.contains("daemon CPU per run"), "\(result.stdout)")
        var metricsPerWorkload = [String: Set<String>]()
        for workload in Self.workloads {
            for variant in variants {
                let matching = rows.filter { $0["workload"] as? String == workload && $0["policy"] as? String == variant }
                #expect(!matching.isEmpty, "rows for \(workload) / \(variant)")
                let metrics = Set(matching.compactMap { $0["metric"] as? String })
                if let expected = metricsPerWorkload[workload] {
                    #expect(metrics == expected, "\(workload): the same metrics for every variant")
                } else {
                    metricsPerWorkload[workload] = metrics
                }
            }
        }
        #expect(Set(rows.compactMap { $0["workload"] as? String }) == Set(Self.workloads))
        #expect(Set(rows.compactMap { $0["policy"] as? String }) == Set(variants))

        // results.csv: a header and one line per JSON row.
        let csv = try String(contentsOfFile: "\(out)/results.csv", encoding: .utf8)
        let lines = csv.split(separator: "\n")
        #expect(lines.first?.hasPrefix("workload,policy,metric,value,ratio_to_native") == true)
        #expect(lines.count == rows.count + 1)

        // chart.svg: well-formed XML, one bar per (workload, policy).
        let svg = try Data(contentsOf: URL(fileURLWithPath: "\(out)/chart.svg"))
        let parser = XMLParser(data: svg)
        let counter = BarCounter()
        parser.delegate = counter
        #expect(parser.parse(), "chart.svg is well-formed XML: \(String(describing: parser.parserError))")
        #expect(counter.rootName == "svg")
        #expect(counter.bars.count == Self.workloads.count * Self.policies.count)
        for workload in Self.workloads {
            for policy in Self.policies {
                #expect(counter.bars.filter { $0.workload == workload && $0.policy == policy }.count == 1,
                        "one bar for \(workload) / \(policy)")
            }
        }
        #expect(counter.spreads == counter.bars.count, "an error bar (min-max) on every bar")
        try expectRendersInsideItsCanvas("\(out)/chart.svg")
    }

    /// Looks at the chart as a reader would: rendered by a real SVG renderer
    /// (librsvg's rsvg-convert) and read back pixel by pixel (Pillow). The
    /// chart is drawn inside a transparent frame 300 px wider on every side,
    /// with its own viewport's clipping off (`overflow="visible"`): whatever
    /// it draws beyond its canvas (the clipped title of issue 18) lands in
    /// the frame. It must not be blank, and the frame must stay empty.
    func expectRendersInsideItsCanvas(_ svg: String) throws {
        let look = try run(["/usr/bin/python3", "-c", """
            import re, subprocess, sys
            from PIL import Image
            text = open(sys.argv[1]).read()
            head = re.search(r'<svg[^>]*>', text).group(0)
            w = float(re.search(r' width="([0-9.]+)"', head).group(1))
            h = float(re.search(r' height="([0-9.]+)"', head).group(1))
            pad = 300
            inner = text[text.index('<svg'):].replace('<svg ', f'<svg x="{pad}" y="{pad}" overflow="visible" ', 1)
            framed = sys.argv[1] + '.framed.svg'
            open(framed, 'w').write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 2 * pad}" height="{h + 2 * pad}">' + inner + '</svg>')
            subprocess.run(['rsvg-convert', '-f', 'png', '-o', framed + '.png', framed], check=True)
            im = Image.open(framed + '.png').convert('RGBA')
            px = im.load()
            W, H = im.size
            inside = lambda x, y: pad <= x < pad + w and pad <= y < pad + h
            ink = sum(1 for x in range(pad, int(pad + w)) for y in range(pad, int(pad + h)) if px[x, y][:3] != (255, 255, 255))
            outside = [(x - pad, y - pad) for x in range(W) for y in range(H) if not inside(x, y) and px[x, y][3] != 0]
            print(int(w), int(h), ink, len(outside), outside[:5])
            """, svg])
        try #require(look.ok, "rsvg-convert (librsvg2-bin) and Pillow (python3-pil), installed by scripts/setup.sh: \(look.stderr)")
        let fields = look.stdout.split(separator: " ")
        let (width, height, ink, outside) = (Int(fields[0]) ?? 0, Int(fields[1]) ?? 0, Int(fields[2]) ?? 0, Int(fields[3]) ?? -1)
        #expect(width > 300 && height > 300, "the chart's size: \(look.stdout)")
        #expect(ink > width * height / 50, "the chart is not blank: \(look.stdout)")
        #expect(outside == 0, "nothing drawn beyond the canvas (pixels outside, relative to its origin): \(look.stdout)")
    }

    @Test func badPolicyMountsNothingAndSaysWhy() throws {
        try requireFUSE()
        let out = "/tmp/fbmm-bench-test-bad-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let mountsBefore = Set(fbmmMountPoints())
        let result = try run([Artefacts.fbmm, "bench", "--quick", "--policy", "local", "--policy", "bind,nodes=97",
                              "--workloads", "gups", "--out", out])
        #expect(result.status != 0)
        #expect(result.stderr.contains("bind,nodes=97"), "names the policy: \(result.stderr)")
        #expect(Set(fbmmMountPoints()).subtracting(mountsBefore).filter { $0.hasPrefix("/tmp/fbmm-bench-") }.isEmpty, "nothing left mounted")
        let unknown = try run([Artefacts.fbmm, "bench", "--policy", "local", "--workloads", "gups,nosuch", "--out", out])
        #expect(unknown.status != 0 && unknown.stderr.contains("unknown workload 'nosuch'"))
    }

    /// Mount points of fbmm filesystems right now.
    func fbmmMountPoints() -> [String] {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            return fields.count > 4 && line.contains(" - fuse.fbmm ") ? String(fields[4]) : nil
        }.filter { isMounted($0) }
    }
}
