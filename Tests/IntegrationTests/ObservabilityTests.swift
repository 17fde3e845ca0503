import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 18, what users see: per-process coverage in `fbmm stat` (how much
/// of a program's memory the mount really holds, and where the rest is),
/// the Prometheus exposition (`fbmm stat --prometheus`, checked with the
/// Prometheus project's own Python parser against the JSON), the scrape
/// endpoint of `-o metrics=PORT`, and `fbmm top`.
@Suite(.serialized)
struct ObservabilityTests {
    /// A program whose memory is in the mount, and one whose memory is
    /// mostly in its brk heap (perl's small strings, system malloc): stat
    /// shows both, with the second's coverage low and a note saying so.
    @Test func statShowsEachProcessCoverage() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let work = try TemporaryDirectory()
        let python = try Background(fbmmRun(mount, [], ["/usr/bin/python3", "-c", holdScript(work.file("py"), work.file("go"))]))
        defer { python.stop() }
        let perl = try Background(fbmmRun(mount, [], [
            "perl", "-e", "my @a = map { 'x' x 1000 } 1..100000; open(my $f, '>', '\(work.file("pl"))'); close $f; "
                + "sleep 1 until -e '\(work.file("go"))';"]))
        defer { perl.stop() }
        try #require(waitForFile(work.file("py"), seconds: 30) != nil, "python: \(python.output)")
        try #require(waitForFile(work.file("pl"), seconds: 30) != nil, "perl: \(perl.output)")

        let processes = try #require(try mount.statistics()["processes"] as? [[String: Any]], "stat --json has processes")
        let byPID = Dictionary(processes.map { (($0["pid"] as? NSNumber)?.int32Value ?? 0, $0) }) { a, _ in a }
        let py = try #require(byPID[python.pid], "python's pid \(python.pid) in \(processes)")
        let pl = try #require(byPID[perl.pid], "perl's pid \(perl.pid) in \(processes)")
        #expect(number(py["mount_bytes"]) >= 60 << 20, "python's 64 MiB are in the mount: \(py)")
        #expect(double(py["coverage"]) > 0.6, "\(py)")
        #expect(number(pl["heap_bytes"]) >= 80 << 20, "perl's strings are in its brk heap: \(pl)")
        #expect(double(pl["coverage"]) < 0.5, "\(pl)")
        // Coverage is what the numbers say.
        let total = number(pl["mount_bytes"]) + number(pl["anon_bytes"]) + number(pl["other_shmem_bytes"])
        #expect(abs(double(pl["coverage"]) - Double(number(pl["mount_bytes"])) / Double(total)) < 1e-6)

        let text = try run([Artefacts.fbmm, "stat", mount.path])
        #expect(text.ok && text.stdout.contains("coverage") && text.stdout.contains("perl[\(perl.pid)] is outside the mount"),
                "\(text.stdout)")
        FileManager.default.createFile(atPath: work.file("go"), contents: nil)
        #expect(python.wait(seconds: 30) == 0 && perl.wait(seconds: 30) == 0, "\(python.output) \(perl.output)")
    }

    /// `fbmm stat --prometheus` parses with prometheus_client's parser, has
    /// the families a dashboard needs, and agrees with `--json`.
    @Test func prometheusExpositionParsesAndAgreesWithJSON() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let work = try TemporaryDirectory()
        let python = try Background(fbmmRun(mount, [], ["/usr/bin/python3", "-c", holdScript(work.file("py"), work.file("go"))]))
        defer { python.stop() }
        try #require(waitForFile(work.file("py"), seconds: 30) != nil, "python: \(python.output)")
        let exposition = try run([Artefacts.fbmm, "stat", mount.path, "--prometheus"])
        try #require(exposition.ok, "\(exposition.stderr)")
        let samples = try parsePrometheus(exposition.stdout)
        let json = try mount.statistics()
        let file = try #require((json["files"] as? [[String: Any]])?.first, "\(json)")
        let path = try #require(file["path"] as? String)
        let resident = samples.first { $0.name == "fbmm_file_resident_bytes" && $0.labels["file"] == path }
        #expect(resident != nil, "a series for \(path): \(exposition.stdout)")
        // Stat runs twice: page counts may move a little between them.
        #expect(abs((resident?.value ?? 0) - Double(number(file["resident_bytes"]))) < Double(8 << 20))
        for family in ["fbmm_info", "fbmm_node_resident_bytes", "fbmm_process_coverage_ratio", "fbmm_process_memory_bytes",
                       "fbmm_files_created_total", "fbmm_broker_handouts_total", "fbmm_prezero_ready_bytes"] {
            #expect(samples.contains { $0.name == family }, "\(family) in the exposition")
        }
        #expect(samples.allSatisfy { $0.labels["mount"] == mount.path }, "every series names its mount")
        let mountBytes = samples.first { $0.name == "fbmm_process_memory_bytes" && $0.labels["pid"] == String(python.pid)
            && $0.labels["where"] == "mount" }
        #expect((mountBytes?.value ?? 0) >= Double(60 << 20), "python's memory in the mount: \(String(describing: mountBytes))")
        FileManager.default.createFile(atPath: work.file("go"), contents: nil)
        #expect(python.wait(seconds: 30) == 0)
    }

    /// `-o metrics=PORT` serves the mount-wide series over HTTP (and no
    /// file or process names, which only their owner may see); a port in
    /// use or a bad value is one line and no mount.
    @Test func metricsEndpointServesMountWideSeries() throws {
        let port = 20000 + Int(getpid() % 20000)
        let mount = try TestMount(options: ["metrics=\(port)"])
        defer { mount.close() }
        _ = try run(["sh", "-c", "head -c 3000000 /dev/zero > \(mount.file("data"))"])
        let scrape = try run(["curl", "-sf", "http://127.0.0.1:\(port)/metrics"], timeout: 30)
        try #require(scrape.ok, "curl: \(scrape.stderr)")
        let samples = try parsePrometheus(scrape.stdout)
        let resident = samples.filter { $0.name == "fbmm_node_resident_bytes" }.map(\.value).reduce(0, +)
        #expect(resident >= 2_900_000, "the file's memory counts in the node series: \(resident)")
        #expect(!samples.contains { $0.name.hasPrefix("fbmm_file_") || $0.name.hasPrefix("fbmm_process_") },
                "no per-file or per-process series on the unauthenticated endpoint")
        let other = try run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/other"], timeout: 30)
        #expect(other.stdout == "404")

        let scratch = try TemporaryDirectory()
        for (value, message) in [("\(port)", "Address already in use"), ("http", "expected a TCP port")] {
            let dir = scratch.file("m\(value.count)")
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let refused = try run([Artefacts.fbmm, "mount", dir, "-o", "metrics=\(value)"])
            #expect(!refused.ok && refused.stderr.contains(message), "\(refused.stderr)")
            #expect(refused.stderr.split(separator: "\n").count == 1, "one line: \(refused.stderr)")
            #expect(!((try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? "").contains(dir), "nothing mounted on \(dir)")
        }
    }

    /// `fbmm top` shows frames with rates after the first.
    @Test func topShowsFramesWithRates() throws {
        let mount = try TestMount()
        defer { mount.close() }
        let top = try run([Artefacts.fbmm, "top", mount.path, "--iterations", "2", "--interval", "0.2"], timeout: 30)
        #expect(top.ok, "\(top.stderr)")
        #expect(top.stdout.components(separatedBy: "fbmm top  \(mount.path)").count == 3, "two frames: \(top.stdout)")
        #expect(top.stdout.contains("handouts/s") && top.stdout.contains("0.0 handouts/s"), "a rate in the second frame: \(top.stdout)")
        let bad = try run([Artefacts.fbmm, "top", mount.path, "--interval", "0"])
        #expect(!bad.ok && bad.stderr.contains("--interval"), "\(bad.stderr)")
    }
}

extension ObservabilityTests {
    /// A process that dies between creating its arena and claiming it (the
    /// shim's create has the sticky bit and the creator's pid in the name)
    /// leaves nothing behind; a file that is not such an arena stays.
    @Test func unclaimedArenaOfADeadProcessGoes() throws {
        let mount = try TestMount()
        defer { mount.close() }
        let script = """
            import os, sys
            d = sys.argv[1]
            os.open(os.path.join(d, "python3.%d.0" % os.getpid()), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o1600)
            os.open(os.path.join(d, "python3.%d.1" % os.getpid()), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.open(os.path.join(d, "sticky.%d" % (os.getpid() + 1)), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o1600)
            os._exit(0)
            """
        let result = try run(["/usr/bin/python3", "-c", script, mount.path])
        try #require(result.ok, "\(result.stderr)")
        var left: [String] = []
        for _ in 0..<50 {
            left = ((try? FileManager.default.contentsOfDirectory(atPath: mount.path)) ?? []).sorted()
            if left.count == 2 { break }
            usleep(20_000)
        }
        #expect(left.count == 2 && left.allSatisfy { !$0.hasSuffix(".0") }, "only the unclaimed arena went: \(left)")
        // Our own arena files work as before (claimed, then gone with the process).
        let probe = try run(fbmmRun(mount, [], [ShimPrograms.probe, "alloc", "8"]))
        #expect(probe.ok, "\(probe.stderr)")
    }
}

/// Python that holds 64 MiB of touched memory, says so in `ready`, and
/// exits when `go` appears.
private func holdScript(_ ready: String, _ go: String) -> String {
    "import os, time\nb = b'x' * (64 << 20)\nopen('\(ready)', 'w').close()\nwhile not os.path.exists('\(go)'): time.sleep(0.05)\n"
}

private struct Sample { var name: String; var labels: [String: String]; var value: Double }

/// Every sample of a text exposition, as the Prometheus client library's
/// parser reads it (Debian's python3-prometheus-client): a format error
/// fails the test.
private func parsePrometheus(_ text: String) throws -> [Sample] {
    let script = """
        import json, sys
        from prometheus_client.parser import text_string_to_metric_families
        out = []
        for family in text_string_to_metric_families(sys.stdin.read()):
            for s in family.samples:
                out.append({"name": s.name, "labels": s.labels, "value": s.value})
        print(json.dumps(out))
        """
    let parsed = try run(["/usr/bin/python3", "-c", script], input: Data(text.utf8))
    try #require(parsed.ok, "prometheus_client rejects the exposition: \(parsed.stderr)\n\(text)")
    let array = try #require(try JSONSerialization.jsonObject(with: Data(parsed.stdout.utf8)) as? [[String: Any]])
    return array.map {
        Sample(name: $0["name"] as? String ?? "", labels: $0["labels"] as? [String: String] ?? [:],
               value: ($0["value"] as? NSNumber)?.doubleValue ?? .nan)
    }
}

private func double(_ value: Any?) -> Double { (value as? NSNumber)?.doubleValue ?? -1 }
