#if os(Linux)
import Foundation
import MSIX
import Testing
import Virtio

/// The hand-off state's encoding: what a successor reads, and what it refuses.
@Suite struct VirtioHandOffStateTests {
    /// A version 1 state as this build wrote it, from a virtio-blk device
    /// frozen with 64 requests in flight on the embedded backend: every later
    /// build must keep reading it (a successor is the newer build).
    static let versionOne = """
        {"backendFeatures":5368709702,"delivery":"irqfd","deviceConfiguration":[0,8,0,0,0,0,0,0,0,0,16,0,126,0,
        0,0,0,0,0,0,0,2,0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
        "deviceType":{"queues":1},"format":"virtio-pci-device","msix":{"enabled":true,
        "entries":[{"addressHigh":0,"addressLow":4276092928,"data":64,"vectorControl":0},{"addressHigh":0,
        "addressLow":4276092928,"data":65,"vectorControl":0}],"functionMasked":false,"pendingBits":[0]},
        "offeredFeatures":4294967878,"pci":{"barValues":[4262526976,4263510016],"command":6,
        "interruptLine":255},"routedVectors":[0,1],"session":{"connected":true,"connection":0,
        "exchangeTimeoutNanoseconds":5000000000,"negotiated":{"acceptedFeatures":5368709120,
        "backendFeatures":5368709702,"memoryTable":[{"guestPhysicalAddress":0,"mmapOffset":0,"size":16777216,
        "userAddress":140648619442176}],"offeredProtocolFeatures":521,"protocolFeatures":521,
        "ringSizes":[{"queue":0,"size":256}]},"reconnects":0,"socketPath":"/tmp/irqfd-vhost-6oQxHX/blk.sock"},
        "transport":{"callsHandedOut":true,"configGeneration":0,"configVector":0,"deviceFeatureSelect":1,
        "disconnectedOnPurpose":false,"driverFeatureSelect":1,"driverFeatures":4294967296,"epoch":1,"isr":0,
        "operationTimeoutNanoseconds":5000000000,"queueSelect":0,"queues":[{"backendCall":1,"descriptor":131072,
        "device":139264,"doorbellBound":true,"driver":135168,"enabled":true,"nextAvailable":0,"notifiable":true,
        "running":true,"size":256,"startedOnBackend":true,"startedRings":[135168,139264],"vector":1}],
        "resets":0,"starts":1,"status":15},"version":1}
        """

    @Test func aVersionOneStateIsRead() throws {
        let state = try VirtioDeviceHandOffState<VirtioBlk>(decoding: Array(Self.versionOne.utf8))
        #expect(state.version == 1 && state.deviceType.queueCount == 1 && state.delivery == "irqfd")
        #expect(state.descriptorCount == 5, "the socket, a kick, an own call, two vector events")
        #expect(state.routedVectors == [0, 1])
        #expect(state.transport.status == 15 && state.transport.queues.count == 1)
        let queue = try #require(state.transport.queues.first)
        #expect(queue.backendCall == .vector(1) && queue.doorbellBound && queue.startedOnBackend)
        #expect(queue.startedRings == [queue.driver, queue.device])
        #expect(state.msix.entries.count == 2 && state.msix.enabled && !state.msix.isPending(1))
        #expect(state.session.connected && state.session.negotiated.memoryTable.count == 1)
        #expect(state.session.negotiated.memoryTable.first?.userAddress == 140_648_619_442_176)
        #expect(state.session.negotiated.ringSizes == [.init(queue: 0, size: 256)])
        #expect(state.pci.command == 6)
    }

    @Test func aStateReadsBackAsItWasWritten() throws {
        let state = try VirtioDeviceHandOffState<VirtioBlk>(decoding: Array(Self.versionOne.utf8))
        let again = try VirtioDeviceHandOffState<VirtioBlk>(decoding: state.encoded())
        #expect(again.encoded() == state.encoded())
        #expect(again.transport == state.transport && again.session == state.session && again.msix == state.msix)
    }

    @Test func anUnknownVersionIsRefusedByNumber() {
        let future = Self.versionOne.replacingOccurrences(of: "\"version\":1}", with: "\"version\":2}")
        do {
            _ = try VirtioDeviceHandOffState<VirtioBlk>(decoding: Array(future.utf8))
            Issue.record("version 2 was read")
        } catch {
            guard case .unsupportedVersion(2, _) = error else {
                Issue.record("\(error)")
                return
            }
        }
    }

    @Test(arguments: [
        #"{"format":"x","version":1}"#, #"{"format":"virtio-pci-device","version":"1"}"#, "not JSON",
        #"{"format":"virtio-pci-device","version":1}"#,
    ])
    func notAStateIsRefused(_ text: String) {
        #expect(throws: VirtioHandOffError.self) { try VirtioDeviceHandOffState<VirtioBlk>(decoding: Array(text.utf8)) }
    }

    @Test func aStateForAnotherDeviceTypeIsRefused() {
        // The same bytes as a network device: its type has no `queuePairs`.
        #expect(throws: VirtioHandOffError.self) {
            try VirtioDeviceHandOffState<VirtioNet>(decoding: Array(Self.versionOne.utf8))
        }
        // Two queues for a device type with one.
        let twoQueues = Self.versionOne.replacingOccurrences(of: #"{"queues":1}"#, with: #"{"queues":2}"#)
        #expect(throws: VirtioHandOffError.self) {
            try VirtioDeviceHandOffState<VirtioBlk>(decoding: Array(twoQueues.utf8))
        }
    }

    @Test func deviceTypesDecodeOnlyWhatTheirInitializersAccept() throws {
        let decoder = JSONDecoder()
        let net = try VirtioNet(queuePairs: 2, mac: [2, 0, 0, 0, 0, 1])
        let decodedNet = try decoder.decode(VirtioNet.self, from: JSONEncoder().encode(net))
        #expect(decodedNet.queuePairs == 2 && decodedNet.mac == net.mac)
        let fs = try VirtioFs(tag: "shared", requestQueues: 3)
        let decodedFs = try decoder.decode(VirtioFs.self, from: JSONEncoder().encode(fs))
        #expect(decodedFs.tag == "shared" && decodedFs.requestQueues == 3)
        #expect(throws: DecodingError.self) {
            try decoder.decode(VirtioNet.self, from: Data(#"{"queuePairs":9,"mac":[1,2,3,4,5,6]}"#.utf8))
        }
        #expect(throws: DecodingError.self) { try decoder.decode(VirtioBlk.self, from: Data(#"{"queues":0}"#.utf8)) }
        #expect(throws: DecodingError.self) {
            try decoder.decode(VirtioFs.self, from: Data(#"{"tag":"","requestQueues":1}"#.utf8))
        }
    }
}
#endif
