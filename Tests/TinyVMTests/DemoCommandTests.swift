#if os(Linux)
import Foundation
import TestSupport
import Testing
import Virtio

/// `swift run irqfd demo` is the package's main job: run the built command in
/// each delivery mode and check the story it tells is the one that happened.
@Suite(needsKVM, .serialized) struct DemoCommandTests {
    @Test(arguments: ["irqfd", "relay", "userspace"])
    func theDemoShowsDeliveryMaskPendingUnmaskAndRetarget(delivery: String) throws {
        let (status, stdout, stderr) = try runProcess(try builtExecutable("irqfd"), ["demo", "--delivery", delivery])
        let text = stdout + stderr
        #expect(status == 0, "\(text)")
        for expected in [
            "arrived on vCPU 0, IDT 0x30", "arrived on vCPU 0, IDT 0x31", "arrived on vCPU 1, IDT 0x32",
            "arrived on vCPU 1, IDT 0x33", "held: masked, latched", "0b10: vector 1 is pending",
            "the pending interrupt arrived on vCPU 0, IDT 0x31, exactly once",
            "guest reads the PBA again                               0b0",
            "vCPU 0: 0x30 x1, 0x31 x2", "vCPU 1: 0x30 x1, 0x32 x1, 0x33 x1",
            "Device signals sent (its SIGNALED register): 6.",
        ] {
            #expect(text.contains(expected), "missing \"\(expected)\" in:\n\(text)")
        }
        #expect(!text.contains("bug") && !text.contains("NOT"), "\(text)")
        expectLiveUpdateSection(text)
        if delivery == "irqfd" {
            #expect(
                text.contains(
                    "guest masks vector 1 (vector control bit 0)             VMM ioctls: 0 table push, 0 arm, 1 disarm")
            )
            #expect(
                text.contains(
                    "guest retargets vector 0 -> vCPU 1 (same IDT vector)    VMM ioctls: 1 table push, 0 arm, 0 disarm")
            )
        }
    }
}
#endif

#if os(Linux)
/// The demo's live-update section: three hand-offs (two to `irqfd run
/// --incoming` processes, one back to the demo), each line carrying the
/// successor's own pause and a vhost-user message count of 0, and the guest's
/// reads going on across them with nothing wrong.
func expectLiveUpdateSection(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(
        text.contains("Live update: the VMM process is replaced under a running guest"), "\(text)",
        sourceLocation: sourceLocation)
    let handOffs = text.split(separator: "\n").filter {
        $0.wholeMatch(of: #/hand-off [1-3]: .+ -> .+ +paused [1-9]\d* µs; vhost-user messages: 0; [1-9]\d* reads done/#)
            != nil
    }
    #expect(handOffs.count == 3, "\(text)", sourceLocation: sourceLocation)
    #expect(
        text.contains("hand-off 3: ") && text.contains(" -> this process "), "\(text)", sourceLocation: sourceLocation)
    #expect(
        text.contains("across 3 hand-offs; wrong data or status: 0, unknown ids: 0, completed twice: 0."),
        "\(text)", sourceLocation: sourceLocation)
}
#endif

#if os(Linux)
/// The demo's virtio-blk section tells the irqfd story with real numbers,
/// served by qemu-storage-daemon where it is installed and by the embedded
/// backend where it is not (the README's first command needs nothing else).
@Suite(needsKVM) struct VirtioDemoCommandTests {
    @Test func theVirtioSectionShowsNoVMMWorkAndAHeldCompletion() throws {
        let backend = DiskBackendKind.preferred
        let (status, stdout, stderr) = try runProcess(try builtExecutable("irqfd"), ["demo"])
        let text = stdout + stderr
        #expect(status == 0, "\(text)")
        for expected in [
            "served by \(backend) over vhost-user", "the image on the host has them: yes",
            "data matches the image: yes",
            "VMM masks vector 1 (vector control bit 0)               vhost-user messages: 0",
            "held: 0 interrupts; PBA 0b10", "arrived as 1 interrupt; vhost-user messages for mask+unmask: 0",
            "0 notify exits, 0 injections", "Backend: \(backend); requests completed by the guest: 8, failed: 0",
        ] {
            #expect(text.contains(expected), "missing \"\(expected)\" in:\n\(text)")
        }
    }
}
#endif
