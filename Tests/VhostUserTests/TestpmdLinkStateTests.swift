#if os(Linux)
import Testing
import VhostUser

/// `TestpmdProcess.linkIsUp(log:)`: testpmd prints "link state change event"
/// for both an up and a down; an up is the one that follows "virtio is now
/// ready for processing" (DPDK's vhost PMD raises it from `new_device`).
@Suite struct TestpmdLinkStateTests {
    static let ready = "VHOST_CONFIG: (/tmp/s.sock) virtio is now ready for processing."
    static let change = "Port 0: link state change event"
    static let queue = "Port 0: queue state event"

    @Test func noDeviceYetIsDown() {
        #expect(!TestpmdProcess.linkIsUp(log: ""))
        #expect(!TestpmdProcess.linkIsUp(log: "Checking link statuses...\n\(Self.queue)\n"))
    }

    @Test func readyWithoutItsChangeEventIsNotUpYet() {
        #expect(!TestpmdProcess.linkIsUp(log: "\(Self.queue)\n\(Self.ready)\n"))
    }

    @Test func theChangeAfterReadyIsUpAndTheNextOneIsDown() {
        let up = "\(Self.ready)\n\n\(Self.change)\n"
        #expect(TestpmdProcess.linkIsUp(log: up))
        #expect(TestpmdProcess.linkIsUp(log: up + "\(Self.queue)\n"), "a queue event changes nothing")
        let down = up + "VHOST_CONFIG: (/tmp/s.sock) read message VHOST_USER_GET_VRING_BASE\n\(Self.change)\n"
        #expect(!TestpmdProcess.linkIsUp(log: down))
        #expect(TestpmdProcess.linkIsUp(log: down + "\(Self.ready)\n\(Self.change)\n"), "a second start")
    }
}
#endif
