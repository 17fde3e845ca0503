// swift-tools-version: 6.1
// An fbmm with one more policy, `headfast`, built from outside the fbmm package.
import PackageDescription

let package = Package(
    name: "fbmm-custom",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fbmm-custom", targets: ["fbmm-custom"]),
    ],
    dependencies: [
        // fbmm itself; from elsewhere: .package(url: "https://.../fbmm", from: "...").
        .package(name: "fbmm", path: "../.."),
    ],
    targets: [
        // The policy alone: depends only on the protocol, so it can be unit-tested
        // without FUSE, a daemon or a NUMA machine.
        .target(
            name: "HeadFast",
            dependencies: [.product(name: "FBMM", package: "fbmm")],
            swiftSettings: [.swiftLanguageMode(.v6)]),
        // The command line: fbmm's own, with the policy registered.
        .executableTarget(
            name: "fbmm-custom",
            dependencies: ["HeadFast", .product(name: "FBMM", package: "fbmm")],
            swiftSettings: [.swiftLanguageMode(.v6)]),
        .testTarget(
            name: "HeadFastTests",
            dependencies: ["HeadFast", .product(name: "FBMM", package: "fbmm")],
            swiftSettings: [.swiftLanguageMode(.v6)]),
    ]
)
