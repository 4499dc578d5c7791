// swift-tools-version: 6.0
import PackageDescription

/// Every target builds in Swift 6 language mode with complete concurrency checking.
/// The build has no warnings, and CI keeps it so: `.ci/run` fails when a clean build prints one.
/// (Not `-warnings-as-errors`: that is an unsafe flag, and SwiftPM refuses a dependency that sets one.)
let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "swift-irqfd",
    platforms: [.macOS(.v15)],
    // What a VMM depends on (CHANGELOG.md, "Stability"). Test hooks
    // (KVMFaultInjection) and the tiny VMM harness (TinyVM) are in no product.
    products: [
        // Stable API: the interface, the KVM backend (and the VM it takes), the relay, the MSI-X emulator.
        .library(name: "IrqFdCore", targets: ["IrqFdCore"]),
        .library(name: "IrqFdKVM", targets: ["IrqFdKVM"]),
        .library(name: "KVM", targets: ["KVM"]),
        .library(name: "IrqFdRelay", targets: ["IrqFdRelay"]),
        .library(name: "MSIX", targets: ["MSIX"]),
        // Experimental: may change in a minor release.
        .library(name: "IrqFdRouting", targets: ["IrqFdRouting"]),
        .library(name: "IrqFdMSHV", targets: ["IrqFdMSHV"]),
        .library(name: "IrqFdWHP", targets: ["IrqFdWHP"]),
        .library(name: "IrqFdProbe", targets: ["IrqFdProbe"]),
        // Experimental too: the vhost-user frontend and its host-side driver, the PCI
        // configuration-space emulation, and the virtio-pci transport with its device types.
        .library(name: "VhostUser", targets: ["VhostUser"]),
        .library(name: "PCI", targets: ["PCI"]),
        .library(name: "Virtio", targets: ["Virtio"]),
        .executable(name: "irqfd", targets: ["irqfd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // `swift package generate-documentation` (Tools/docs); a build-time plugin, linked into nothing.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // C: ioctl request numbers and non-variadic wrappers; nothing Swift can import directly.
        .target(name: "CLinuxKVM"),
        // Guest programs: 16-bit x86 assembly, assembled by the toolchain into the binary.
        .target(name: "GuestPrograms"),

        // The interface: protocols, Event, MsiMessage, errors. No platform code.
        .target(
            name: "IrqFdCore",
            dependencies: [.product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // GSI allocator, routing table with batches, routes: shared by KVM and mshv. No platform code.
        .target(name: "IrqFdRouting", dependencies: ["IrqFdCore"], swiftSettings: strict),
        // Linux primitives, written once: the EINTR-retrying system call, eventfd, memfd-backed
        // memory and its seals, Unix sockets with SCM_RIGHTS, poll(2) and epoll(7).
        .target(
            name: "IrqFdLinux",
            dependencies: ["IrqFdCore", "CLinuxKVM", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // Typed /dev/kvm wrappers, one method per ioctl.
        .target(
            name: "KVM",
            dependencies: ["IrqFdCore", "IrqFdLinux", "CLinuxKVM", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // Test-only: makes chosen VM ioctls fail on purpose. In no product: a VMM never links it.
        .target(
            name: "KVMFaultInjection",
            dependencies: ["IrqFdCore", "KVM", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // The KVM backend: KVM's encoding of the shared routing core, and the glue a VMM puts around a
        // coalescing partition (the interim relay, commit-error reporting to its MSI-X emulators).
        .target(
            name: "IrqFdKVM",
            dependencies: [
                "IrqFdCore", "IrqFdRouting", "IrqFdLinux", "KVM", "CLinuxKVM", "IrqFdRelay", "MSIX",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // The mshv backend: mshv's encoding of the shared routing core.
        .target(
            name: "IrqFdMSHV",
            dependencies: [
                "IrqFdCore", "IrqFdRouting", "IrqFdLinux", "CLinuxKVM",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict),
        // What this machine offers (`irqfd probe`): KVM capabilities and which backends run here.
        .target(name: "IrqFdProbe", dependencies: ["IrqFdCore", "IrqFdKVM", "IrqFdMSHV", "KVM"], swiftSettings: strict),
        // The MSI-X emulator: capability, table and PBA, delivered through any IrqFd. No platform code.
        .target(name: "MSIX", dependencies: ["IrqFdCore"], swiftSettings: strict),
        // One PCI configuration-space emulation, configuration mechanism #1, the PCI function
        // protocol, and how a function's MSI-X reaches the guest.
        .target(name: "PCI", dependencies: ["IrqFdCore", "MSIX", "IrqFdRelay"], swiftSettings: strict),
        // The tiny VMM used by tests, the demo and the benchmark: a harness, in no product.
        .target(
            name: "TinyVM",
            dependencies: [
                "IrqFdCore", "IrqFdKVM", "IrqFdLinux", "IrqFdRelay", "IrqFdRouting", "KVM", "CLinuxKVM", "GuestPrograms",
                "MSIX", "PCI",
                "Virtio",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // The vhost-user frontend (protocol, messages, validation, deadlines); no KVM code.
        .target(
            name: "VhostUser",
            dependencies: ["IrqFdLinux", "IrqFdCore", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // The virtio-pci transport and its device types (virtio-blk), served by a vhost-user
        // backend; any VMM that implements its protocols (guest memory, doorbells, interrupts, PCI).
        .target(
            name: "Virtio",
            dependencies: [
                "VhostUser", "MSIX", "PCI", "IrqFdCore", "IrqFdLinux", "IrqFdRelay", "VirtqueueWalk",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // The benchmark's floor: the measured operations in plain C ioctls, no library code.
        .target(name: "CBenchFloor"),
        // `irqfd bench`: measurements on KVM, and the report (percentiles, JSON, SVG, tables).
        .target(
            name: "Bench",
            dependencies: [
                "IrqFdCore", "IrqFdKVM", "IrqFdRelay", "IrqFdRouting", "KVM", "MSIX", "TinyVM", "CBenchFloor", "CLinuxKVM",
                "VhostUser", "Virtio", "PCI", "IrqFdLinux",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict),
        // A device in another process: signals an MSI-X vector's eventfd received over a Unix socket.
        .executableTarget(
            name: "irqfd-device-helper",
            dependencies: ["IrqFdLinux", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // The embedded vhost-user-blk back-end: serves a raw image, signals the call fds.
        .target(
            name: "VhostUserBlkBackend",
            dependencies: [
                "VhostUser", "IrqFdLinux", "IrqFdCore", "CBlkBackend", "VirtqueueWalk",
                .product(name: "SystemPackage", package: "swift-system"),
                // The command line its executables share (Options.swift).
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        // C for the embedded back-end, what Swift cannot write: the SIGBUS handler that contains a fault
        // in guest memory truncated under its mapping.
        .target(name: "CBlkBackend"),
        // The split-virtqueue descriptor-chain walker over a guest memory map: bounded, trusts nothing in the
        // table. No platform code; a device on either side of vhost-user can use it.
        .target(name: "VirtqueueWalk", swiftSettings: strict),
        // Test equipment, in no product: libFuzzer target over the back-end's message decoder and the chain walker
        // (Tools/fuzz-backend); built plainly it replays the kept corpus.
        .executableTarget(
            name: "irqfd-backend-fuzz", dependencies: ["VhostUserBlkBackend", "VirtqueueWalk", "VhostUser"],
            swiftSettings: strict),
        // The embedded back-end as a standalone executable (also `irqfd vhost-user-blk`).
        .executableTarget(
            name: "irqfd-vhost-user-blk",
            dependencies: ["VhostUserBlkBackend", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict),
        // Test equipment, in no product: the embedded back-end breaking the protocol on purpose (`--misbehave`).
        .executableTarget(
            name: "irqfd-vhost-user-blk-hostile",
            dependencies: [
                "VhostUserBlkBackend", "VhostUser", "IrqFdLinux", "IrqFdCore",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "irqfd",
            dependencies: [
                "Bench",
                "IrqFdCore", "IrqFdKVM", "KVM", "TinyVM", "GuestPrograms",
                "IrqFdProbe", "Virtio", "PCI", "VhostUser", "VhostUserBlkBackend",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),

        // The relay backend: a userspace IrqFd over any MsiInjector (epoll thread on Linux).
        .target(
            name: "IrqFdRelay",
            dependencies: ["IrqFdCore", "IrqFdRouting", "IrqFdLinux", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // C: Microsoft's WinHvPlatform.h and its import library (Windows only; empty elsewhere).
        .target(name: "CWinHvPlatform", linkerSettings: [.linkedLibrary("WinHvPlatform", .when(platforms: [.windows]))]),
        // The WHP backend: trigger strategy over a TriggerProvider; WinHvPlatform binding under #if os(Windows)
        // (through CWinHvPlatform), a provider modelling WHP's documented trigger behaviour on KVM under #if os(Linux).
        .target(
            name: "IrqFdWHP",
            dependencies: [
                "IrqFdCore", "IrqFdRelay",
                .target(name: "CWinHvPlatform", condition: .when(platforms: [.windows])),
                .target(name: "IrqFdLinux", condition: .when(platforms: [.linux])),
                .target(name: "IrqFdKVM", condition: .when(platforms: [.linux])),
                .target(name: "KVM", condition: .when(platforms: [.linux])),
            ],
            swiftSettings: strict),

        // Fixtures shared by the test targets, none needing KVM: polling, descriptor identity and leak
        // checks, tests in their own process, subprocesses, a seeded generator, disk images.
        .target(name: "TestSupport", swiftSettings: strict),
        // The KVM fixtures: the interrupt-counting guest on a TinyVM, a virtio-blk driver on the host.
        .target(
            name: "KVMTestSupport",
            dependencies: ["TestSupport", "IrqFdCore", "IrqFdKVM", "IrqFdLinux", "KVM", "MSIX", "TinyVM", "Virtio"],
            swiftSettings: strict),
        .testTarget(
            name: "IrqFdCoreTests",
            dependencies: ["IrqFdCore", "IrqFdLinux", "CLinuxKVM", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        .testTarget(
            name: "IrqFdMSHVTests",
            dependencies: [
                "TestSupport", "IrqFdCore", "IrqFdRouting", "IrqFdMSHV", "IrqFdLinux", "IrqFdKVM", "KVM", "KVMFaultInjection",
                "CLinuxKVM", "TinyVM",
            ],
            swiftSettings: strict),
        .testTarget(name: "IrqFdProbeTests", dependencies: ["TestSupport", "IrqFdProbe", "IrqFdCore"], swiftSettings: strict),
        .testTarget(name: "IrqFdRoutingTests", dependencies: ["IrqFdCore", "IrqFdRouting", "IrqFdLinux", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "IrqFdKVMTests",
            dependencies: [
                "TestSupport", "KVMTestSupport", "IrqFdCore", "IrqFdKVM", "IrqFdLinux", "KVM", "KVMFaultInjection", "CLinuxKVM", "TinyVM", "GuestPrograms",
                "IrqFdRelay", "IrqFdRouting", "MSIX",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "IrqFdRelayTests",
            dependencies: [
                "TestSupport", "KVMTestSupport", "IrqFdCore", "IrqFdRelay", "IrqFdKVM", "IrqFdLinux", "KVM", "KVMFaultInjection",
                "TinyVM", "GuestPrograms",
            ],
            swiftSettings: strict),
        .testTarget(
            name: "IrqFdWHPTests",
            dependencies: ["TestSupport", "KVMTestSupport", "IrqFdCore", "IrqFdWHP", "IrqFdRelay", "IrqFdKVM", "IrqFdLinux", "KVM", "TinyVM"],
            swiftSettings: strict),
        // The route-semantics suite, written once and run against every backend that runs here.
        .testTarget(
            name: "RouteSemanticsTests",
            dependencies: ["TestSupport", "KVMTestSupport", "IrqFdCore", "IrqFdKVM", "IrqFdRelay", "IrqFdWHP", "IrqFdLinux", "KVM", "TinyVM"],
            swiftSettings: strict),
        .testTarget(
            name: "MSIXTests",
            dependencies: [
                "MSIX", "IrqFdCore", "IrqFdLinux", "TestSupport",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "BenchTests",
            dependencies: [
                "TestSupport", "Bench", "Virtio", .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strict),
        // C for the reliability tests: hostile guest programs (16-bit assembly), malloc statistics.
        .target(name: "CReliability", dependencies: ["GuestPrograms"]),
        // Attacks: fault injection, leak soak, hostile guests and inputs, fuzzing, lossless stress.
        .testTarget(
            name: "ReliabilityTests",
            dependencies: [
                "TestSupport", "KVMTestSupport", "IrqFdCore", "IrqFdRouting", "IrqFdKVM", "IrqFdRelay", "IrqFdLinux", "KVM", "KVMFaultInjection", "CLinuxKVM", "MSIX",
                "TinyVM", "GuestPrograms", "CReliability", "Virtio", "PCI", "VhostUser", .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // The fuzz corpus is read by path (#filePath), not bundled.
            exclude: ["Corpus"],
            swiftSettings: strict),
        // The descriptor-chain walker alone: hand-written tables over memory of this process.
        .testTarget(name: "VirtqueueWalkTests", dependencies: ["VirtqueueWalk"], swiftSettings: strict),
        // The vhost-user frontend against real back-ends and hostile peers. A guest only where the
        // kernel must signal an eventfd (KVM_IOEVENTFD): TinyVM's MMIO writer.
        .testTarget(
            name: "VhostUserTests",
            dependencies: [
                "TestSupport", "VhostUser", "IrqFdLinux", "IrqFdCore", "TinyVM", "KVM",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "VirtioTests",
            dependencies: [
                "TestSupport", "KVMTestSupport", "Virtio", "PCI", "VhostUser", "TinyVM", "KVM", "MSIX", "IrqFdCore",
                "IrqFdLinux",
            ],
            swiftSettings: strict),
        // The virtio-blk device attached to a minimal VMM of the test's own on KVM: no TinyVM,
        // no TestSupport (which links it), so nothing the device needs can come from there.
        .testTarget(
            name: "VirtioEmbeddingTests",
            dependencies: [
                "Virtio", "PCI", "VhostUser", "KVM", "IrqFdKVM", "IrqFdCore", "IrqFdLinux", "IrqFdRelay", "MSIX",
                "CLinuxKVM", "GuestPrograms", .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict),
        // The PCI layer without a VM: configuration mechanism #1 and the configuration-space emulation.
        .testTarget(name: "PCITests", dependencies: ["PCI"], swiftSettings: strict),
        // The shared fixtures themselves (the descriptor identity every leak check relies on).
        .testTarget(name: "TestSupportTests", dependencies: ["TestSupport", "IrqFdLinux"], swiftSettings: strict),
        .testTarget(
            name: "TinyVMTests",
            dependencies: [
                "TestSupport", "KVMTestSupport", "TinyVM", "KVM", "KVMFaultInjection", "IrqFdCore", "IrqFdKVM", "IrqFdLinux",
                "GuestPrograms", "MSIX", "CLinuxKVM", "PCI", "IrqFdRouting", "Virtio",
            ],
            swiftSettings: strict),
    ]
)
