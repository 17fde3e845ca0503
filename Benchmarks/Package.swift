// swift-tools-version: 6.1
// Micro-benchmarks of fbmm's costs (ordo-one/benchmark), in a package of their
// own so that the main build and CI do not pay for the benchmark framework.
//   swift build --package-path Benchmarks --scratch-path .build-bench
//   swift package --package-path Benchmarks --scratch-path .build-bench benchmark
// Needs root (it mounts) and a built fbmm (scripts/build.sh; or FBMM_BIN).
import PackageDescription

let package = Package(
    name: "fbmm-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "fbmm", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "FBMMBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "FBMM", package: "fbmm"),
            ],
            path: "Benchmarks/FBMMBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v5)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
    ]
)
