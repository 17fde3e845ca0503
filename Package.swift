// swift-tools-version: 6.1
// fbmm: File-Based Memory Management in user space. One target per layer:
//   CFuse3 / CNuma / CFBMMSys  - C system libraries and the broker wire header
//   FBMMCore                   - typed syscall wrappers: memfd, mmap, NUMA, topology
//   FBMMTracking               - access trackers (soft-dirty, DAMON): which pages a process uses
//   FBMMPolicy                 - the policy protocol and the built-in policies
//   FUSEKit                    - a Swift face on libfuse3's low-level API
//   FBMMDaemon                 - the memory filesystem, the fd broker, statistics
//   FBMMCLI                    - the `fbmm` command line (a library, so other
//                                packages can build their own fbmm with more policies)
//   fbmm                       - the executable
// The LD_PRELOAD shim (shim/) is C built by make, not SwiftPM: a SwiftPM dynamic
// library would pull the Swift runtime into every preloaded process.
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

let package = Package(
    name: "fbmm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fbmm", targets: ["fbmm"]),
        .library(name: "FBMM", targets: ["FBMMCLI", "FBMMPolicy", "FBMMProtocol", "FBMMTracking", "FBMMCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
    ],
    targets: [
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CNuma", providers: [.apt(["libnuma-dev"])]),
        .target(name: "CFBMMSys"),
        .target(
            name: "FBMMCore",
            dependencies: [
                "CNuma", "CFBMMSys",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings),
        .target(
            name: "FBMMTracking",
            dependencies: ["FBMMCore", "CNuma", "CFBMMSys"],
            swiftSettings: swiftSettings),
        .target(
            name: "FBMMProtocol",
            dependencies: ["FBMMCore"],
            swiftSettings: swiftSettings),
        .target(
            name: "FBMMPolicy",
            dependencies: ["FBMMCore", "FBMMTracking", "FBMMProtocol"],
            swiftSettings: swiftSettings),
        .target(
            name: "FUSEKit",
            dependencies: [
                "CFuse3",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings),
        .target(
            name: "FBMMDaemon",
            dependencies: [
                "FBMMCore", "FBMMProtocol", "FBMMPolicy", "FUSEKit", "CFBMMSys",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Collections", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings),
        .target(
            name: "FBMMCLI",
            dependencies: [
                "FBMMDaemon", "FBMMProtocol", "FBMMPolicy", "FBMMTracking", "FBMMCore", "CFBMMSys",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings),
        .executableTarget(
            name: "fbmm",
            dependencies: ["FBMMCLI"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "FBMMCoreTests",
            dependencies: ["FBMMCore"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "FBMMPolicyTests",
            dependencies: ["FBMMPolicy", "FBMMTracking", "FBMMCore"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["FBMMCore", "CFBMMSys"],
            swiftSettings: swiftSettings),
    ]
)
