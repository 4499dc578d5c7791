import Foundation
import IrqFdCore

#if os(Linux)
import Glibc
import IrqFdKVM
import IrqFdMSHV
import KVM
#endif

/// What this machine offers for interrupt delivery: the KVM interface's
/// interrupt capabilities and, per backend, whether it can run here and why not.
public struct ProbeReport: Codable, Sendable, Equatable {
    /// Operating system, kernel release and CPU architecture, e.g. "Linux 6.18.44 x86_64".
    public var platform: String
    /// /dev/kvm's answers.
    public var kvm: KVMCapabilities
    /// One entry per backend, in the order kvm, relay, mshv, whp.
    public var backends: [Backend]

    /// The KVM interface's interrupt-related answers (KVM_CHECK_EXTENSION on a scratch VM).
    public struct KVMCapabilities: Codable, Sendable, Equatable {
        /// The device path asked.
        public var path: String
        /// Whether the device opened and answered KVM_GET_API_VERSION with 12.
        public var present: Bool
        /// Why it is not usable, when it is not.
        public var error: String?
        /// KVM_GET_API_VERSION.
        public var apiVersion: Int?
        /// KVM_CAP_IRQFD.
        public var irqfd: Bool
        /// KVM_CAP_IRQ_ROUTING: entries (GSIs) one routing table may hold; 0 without routing.
        public var gsiRoutingSize: Int
        /// KVM_CAP_SIGNAL_MSI.
        public var signalMsi: Bool
        /// KVM_CAP_SPLIT_IRQCHIP (local APICs in the kernel, IOAPIC in userspace).
        public var splitIrqchip: Bool
        /// KVM_CAP_X2APIC_API.
        public var x2apicAPI: X2APIC
        /// KVM_CAP_NR_VCPUS (recommended) and KVM_CAP_MAX_VCPUS (maximum).
        public var vcpus: VCPUs

        /// KVM_CAP_X2APIC_API's answer: the flags KVM_ENABLE_CAP accepts.
        public struct X2APIC: Codable, Sendable, Equatable {
            /// Any flag offered.
            public var supported: Bool
            /// The raw flags.
            public var flags: Int
            /// KVM_X2APIC_API_USE_32BIT_IDS: 32-bit destination IDs in routes and MSIs.
            public var use32BitIds: Bool
            /// KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK.
            public var disableBroadcastQuirk: Bool

            /// Decodes KVM_CAP_X2APIC_API's flags.
            public init(flags: Int) {
                self.flags = flags
                supported = flags != 0
                use32BitIds = flags & 1 != 0
                disableBroadcastQuirk = flags & 2 != 0
            }
        }

        /// vCPU counts.
        public struct VCPUs: Codable, Sendable, Equatable {
            /// KVM_CAP_NR_VCPUS.
            public var recommended: Int
            /// KVM_CAP_MAX_VCPUS.
            public var max: Int
        }

        /// The answers of a machine without a usable KVM.
        static func absent(path: String, error: String) -> KVMCapabilities {
            KVMCapabilities(
                path: path, present: false, error: error, apiVersion: nil, irqfd: false, gsiRoutingSize: 0,
                signalMsi: false, splitIrqchip: false, x2apicAPI: X2APIC(flags: 0), vcpus: VCPUs(recommended: 0, max: 0)
            )
        }
    }

    /// Whether one backend can run here.
    public struct Backend: Codable, Sendable, Equatable {
        /// "kvm", "relay", "mshv" or "whp".
        public var name: String
        /// Whether it can run on this machine.
        public var available: Bool
        /// How that was established, or why it cannot run.
        public var detail: String

        /// A backend's verdict.
        public init(name: String, available: Bool, detail: String) {
            self.name = name
            self.available = available
            self.detail = detail
        }
    }

    /// The backend named `name`.
    public func backend(_ name: String) -> Backend? { backends.first { $0.name == name } }

    /// The report as JSON (sorted keys, pretty-printed), for `irqfd probe --json`.
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Every field is a string, number, bool or nested struct of them: encoding cannot fail.
        let data = (try? encoder.encode(self)) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The report as a table for people.
    public func table() -> String {
        func yes(_ flag: Bool) -> String { flag ? "yes" : "no" }
        var lines = ["irqfd probe: \(platform)", ""]
        lines.append("KVM (\(kvm.path))")
        if kvm.present {
            let x2apic =
                kvm.x2apicAPI.supported
                ? "yes (32-bit IDs: \(yes(kvm.x2apicAPI.use32BitIds)), broadcast quirk off: \(yes(kvm.x2apicAPI.disableBroadcastQuirk)))"
                : "no"
            let rows: [(String, String)] = [
                ("API version", kvm.apiVersion.map(String.init) ?? "?"),
                ("irqfd", yes(kvm.irqfd)),
                ("GSI routing entries", kvm.gsiRoutingSize > 0 ? "\(kvm.gsiRoutingSize)" : "no routing"),
                ("signal MSI", yes(kvm.signalMsi)),
                ("split irqchip", yes(kvm.splitIrqchip)),
                ("x2APIC API", x2apic),
                ("vCPUs", "recommended \(kvm.vcpus.recommended), max \(kvm.vcpus.max)"),
            ]
            for (name, value) in rows {
                lines.append("  " + name.padding(toLength: 21, withPad: " ", startingAt: 0) + value)
            }
        } else {
            lines.append("  not usable: \(kvm.error ?? "unknown")")
        }
        lines.append("")
        lines.append("Backends")
        for backend in backends {
            let state = backend.available ? "available" : "not available"
            lines.append(
                "  " + backend.name.padding(toLength: 7, withPad: " ", startingAt: 0)
                    + state.padding(toLength: 15, withPad: " ", startingAt: 0) + backend.detail)
        }
        return lines.joined(separator: "\n")
    }
}

/// Finds out what this machine offers; see `ProbeReport`.
public enum Probe {
    /// Probes the machine. KVM's backends are checked by doing the real thing on
    /// a scratch VM (programming a route; injecting an MSI), not only by asking
    /// for capabilities; the VM is gone when this returns.
    public static func run(kvmPath: String = "/dev/kvm", mshvPath: String = "/dev/mshv") -> ProbeReport {
        #if os(Linux)
        let (kvm, kvmBackend, relay) = probeKVM(path: kvmPath)
        return ProbeReport(
            platform: platform(), kvm: kvm, backends: [kvmBackend, relay, probeMSHV(path: mshvPath), probeWHP()])
        #else
        let why = "KVM is Linux only"
        return ProbeReport(
            platform: platform(), kvm: .absent(path: kvmPath, error: why),
            backends: [
                .init(name: "kvm", available: false, detail: why),
                .init(
                    name: "relay", available: false,
                    detail: "this build's relay injects through KVM_SIGNAL_MSI: Linux only"),
                .init(name: "mshv", available: false, detail: "mshv is Linux only"),
                probeWHP(),
            ])
        #endif
    }

    static func platform() -> String {
        #if os(Linux)
        var names = utsname()
        uname(&names)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return "\(field(names.sysname)) \(field(names.release)) \(field(names.machine))"
        #elseif os(Windows)
        return "Windows"
        #else
        return ProcessInfo.processInfo.operatingSystemVersionString
        #endif
    }

    static func probeWHP() -> ProbeReport.Backend {
        #if os(Windows)
        ProbeReport.Backend(
            name: "whp", available: false,
            detail: "not probed: this build does not query WHvGetCapability (WHvCapabilityCodeHypervisorPresent) yet")
        #else
        ProbeReport.Backend(name: "whp", available: false, detail: "WHP: Windows only (Windows Hypervisor Platform)")
        #endif
    }

    #if os(Linux)
    static func probeMSHV(path: String) -> ProbeReport.Backend {
        do throws(IrqFdError) {
            _ = try MSHVSystem(path: path)
            return ProbeReport.Backend(
                name: "mshv", available: true,
                detail: "\(path) opens; the probe creates no partition, so MSHV_IRQFD itself is not exercised")
        } catch {
            if case .unsupported = error {
                return ProbeReport.Backend(name: "mshv", available: false, detail: "\(path): not present")
            }
            return ProbeReport.Backend(name: "mshv", available: false, detail: "\(error)")
        }
    }

    static func probeKVM(path: String) -> (ProbeReport.KVMCapabilities, ProbeReport.Backend, ProbeReport.Backend) {
        func unavailable(_ why: String) -> (ProbeReport.KVMCapabilities, ProbeReport.Backend, ProbeReport.Backend) {
            (
                .absent(path: path, error: why),
                .init(name: "kvm", available: false, detail: why),
                .init(
                    name: "relay", available: false,
                    detail: "injects through KVM_SIGNAL_MSI, and KVM is not usable: \(why)")
            )
        }
        guard access(path, F_OK) == 0 else { return unavailable("\(path): not present") }
        let system: KVMSystem
        let vm: VirtualMachine
        let version: Int
        do throws(SystemCallError) {
            system = try KVMSystem(path: path)
            version = try system.apiVersion()
            vm = try system.createVM()
        } catch {
            return unavailable("\(error)")
        }
        let capabilities = ProbeReport.KVMCapabilities(
            path: path, present: true, error: nil, apiVersion: version,
            irqfd: vm.checkExtension(.irqfd) > 0,
            gsiRoutingSize: vm.checkExtension(.irqRouting),
            signalMsi: vm.checkExtension(.signalMsi) > 0,
            splitIrqchip: vm.checkExtension(.splitIrqchip) > 0,
            x2apicAPI: .init(flags: vm.checkExtension(.x2apicAPI)),
            vcpus: .init(recommended: system.checkExtension(.nrVCPUs), max: system.checkExtension(.maxVCPUs)))
        do throws(SystemCallError) {
            try vm.createIrqchip()
        } catch {
            let why = "KVM_CREATE_IRQCHIP failed on a scratch VM: \(error)"
            return (
                capabilities, .init(name: "kvm", available: false, detail: why),
                .init(name: "relay", available: false, detail: why)
            )
        }
        return (capabilities, checkIrqfd(vm: vm), checkSignalMsi(vm: vm, capable: capabilities.signalMsi))
    }

    /// The kvm backend runs here if a route can be programmed and armed: one
    /// KVM_SET_GSI_ROUTING and one KVM_IRQFD on the scratch VM, then undone.
    static func checkIrqfd(vm: VirtualMachine) -> ProbeReport.Backend {
        do throws(IrqFdError) {
            let irqfd = try KVMIrqFd(vm: vm)
            let route = try irqfd.newRoute()
            try route.setMsi(MsiMessage(destination: 0, vector: 0x40))
            guard route.isArmed else {
                return .init(name: "kvm", available: false, detail: "a route with an MSI did not arm")
            }
            return .init(
                name: "kvm", available: true,
                detail:
                    "KVM_SET_GSI_ROUTING + KVM_IRQFD armed a route on a scratch VM; \(irqfd.gsiCapacity) GSIs for MSI routes"
            )
        } catch {
            return .init(name: "kvm", available: false, detail: "\(error)")
        }
    }

    /// The relay runs here if KVM_SIGNAL_MSI works (its MsiInjector on Linux):
    /// one MSI injected on the scratch VM, which has an irqchip and one vCPU.
    static func checkSignalMsi(vm: VirtualMachine, capable: Bool) -> ProbeReport.Backend {
        guard capable else { return .init(name: "relay", available: false, detail: "KVM_CAP_SIGNAL_MSI is missing") }
        do throws(SystemCallError) {
            let vcpu = try vm.createVCPU(id: 0)
            try vm.signalMsi(address: MsiMessage.addressBase, data: 0x40)
            _ = vcpu
            return .init(
                name: "relay", available: true,
                detail: "KVM_SIGNAL_MSI injected an MSI on a scratch VM (the relay's injector here)")
        } catch {
            return .init(name: "relay", available: false, detail: "\(error)")
        }
    }
    #endif
}
