#if os(Linux)
import Foundation
import Glibc
import TestSupport
import Testing

/// `swift run irqfd demo` builds the `irqfd` product and nothing else: with no
/// qemu-storage-daemon, the demo's virtio-blk backend must come from `irqfd`
/// itself (`irqfd vhost-user-blk`), not from a standalone executable that
/// `swift run` never built.
@Suite(needsKVM) struct DemoNeedsOnlyItsOwnExecutableTests {
    @Test func theDemoServesVirtioBlkFromItsOwnExecutableWithNoOtherBackendAround() throws {
        let built = try builtExecutable("irqfd")
        // A directory with `irqfd` alone (a hard link: /proc/self/exe names it), outside the
        // build directory, so no `irqfd-vhost-user-blk` is next to it or above it.
        let buildRoot = built.resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let directory = buildRoot.appendingPathComponent("irqfd-alone-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let alone = directory.appendingPathComponent("irqfd")
        if link(built.resolvingSymlinksInPath().path, alone.path) != 0 {
            try FileManager.default.copyItem(at: built, to: alone)
        }
        var above = directory
        while above.path != "/" {
            #expect(!FileManager.default.fileExists(atPath: above.appendingPathComponent("irqfd-vhost-user-blk").path))
            above.deleteLastPathComponent()
        }
        // A PATH with no qemu-storage-daemon on it hides the third-party backend.
        let (status, stdout, stderr) = try runProcess(alone, ["demo"], environment: ["PATH": directory.path])
        let text = stdout + stderr
        #expect(status == 0, "\(text)")
        for expected in [
            "served by embedded over vhost-user", "the image on the host has them: yes", "data matches the image: yes",
            "Backend: embedded; requests completed by the guest: 8, failed: 0",
        ] {
            #expect(text.contains(expected), "missing \"\(expected)\" in:\n\(text)")
        }
        // The live-update section too: its successors are this executable, its backend the embedded one.
        #expect(text.contains("in flight on 00:02.0 (embedded)"), "\(text)")
        expectLiveUpdateSection(text)
    }
}
#endif
