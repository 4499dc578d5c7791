import Foundation
import IrqFdProbe
import TestSupport
import Testing

let mshvPresent = FileManager.default.fileExists(atPath: "/dev/mshv")

@Suite(.serialized) struct ProbeTests {
    /// The JSON is an object with platform, kvm and backends, every field typed
    /// as documented, whatever this machine is.
    @Test func theJsonHasTheDocumentedShape() throws {
        let json = Probe.run().json()
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(Set(object.keys) == ["platform", "kvm", "backends"])
        #expect(object["platform"] is String)
        let kvm = try #require(object["kvm"] as? [String: Any])
        for key in ["present", "irqfd", "signalMsi", "splitIrqchip"] { #expect(kvm[key] is Bool, "kvm.\(key)") }
        #expect(kvm["path"] as? String == "/dev/kvm")
        #expect(kvm["gsiRoutingSize"] is Int)
        let x2apic = try #require(kvm["x2apicAPI"] as? [String: Any])
        #expect(Set(x2apic.keys) == ["supported", "flags", "use32BitIds", "disableBroadcastQuirk"])
        let vcpus = try #require(kvm["vcpus"] as? [String: Any])
        #expect(vcpus["recommended"] is Int && vcpus["max"] is Int)
        let backends = try #require(object["backends"] as? [[String: Any]])
        #expect(backends.compactMap { $0["name"] as? String } == ["kvm", "relay", "mshv", "whp"])
        for backend in backends {
            #expect(backend["available"] is Bool && (backend["detail"] as? String)?.isEmpty == false)
        }
        let decoded = try JSONDecoder().decode(ProbeReport.self, from: Data(json.utf8))
        #expect(decoded.backends.count == 4)
    }

    @Test(needsKVM)
    func onThisMachineKVMIrqfdAndTheRelayAreAvailable() throws {
        let report = Probe.run()
        #expect(report.kvm.present && report.kvm.apiVersion == 12)
        #expect(report.kvm.irqfd && report.kvm.signalMsi)
        #expect(report.kvm.gsiRoutingSize >= 1024, "KVM_MAX_IRQ_ROUTES has been 4096 since Linux 4.x")
        #expect(report.kvm.vcpus.recommended >= 1 && report.kvm.vcpus.max >= report.kvm.vcpus.recommended)
        let kvm = try #require(report.backend("kvm"))
        #expect(kvm.available, "\(kvm.detail)")
        #expect(kvm.detail.contains("KVM_IRQFD"))
        let relay = try #require(report.backend("relay"))
        #expect(relay.available, "\(relay.detail)")
        #expect(relay.detail.contains("KVM_SIGNAL_MSI"))
    }

    @Test(.enabled(if: !mshvPresent, "/dev/mshv exists here"))
    func mshvAndWhpSayWhyNot() throws {
        let report = Probe.run()
        #expect(
            report.backend("mshv")
                == ProbeReport.Backend(name: "mshv", available: false, detail: "/dev/mshv: not present"))
        #if !os(Windows)
        #expect(report.backend("whp")?.available == false)
        #expect(report.backend("whp")?.detail.hasPrefix("WHP: Windows only") == true)
        #endif
    }

    @Test func anAbsentKVMSaysSoForKVMAndTheRelay() throws {
        let report = Probe.run(kvmPath: "/nonexistent/kvm")
        #expect(!report.kvm.present && report.kvm.error == "/nonexistent/kvm: not present")
        #expect(
            report.backend("kvm")
                == ProbeReport.Backend(name: "kvm", available: false, detail: "/nonexistent/kvm: not present"))
        #expect(report.backend("relay")?.available == false)
        #expect(report.table().contains("not usable: /nonexistent/kvm: not present"))
    }

    @Test(needsKVM)
    func theTableListsEveryCapabilityAndBackend() {
        let table = Probe.run().table()
        for label in [
            "API version", "irqfd", "GSI routing entries", "signal MSI", "split irqchip", "x2APIC API", "vCPUs",
        ] {
            #expect(table.contains("  \(label)"), "\(label)")
        }
        for backend in ["kvm", "relay", "mshv", "whp"] { #expect(table.contains("\n  \(backend) ")) }
    }
}
