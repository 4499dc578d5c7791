import ArgumentParser
import IrqFdProbe

/// `irqfd probe`: what this machine offers, and which backends can run here.
struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Report KVM's interrupt capabilities and which irqfd backends can run on this machine.",
        discussion: """
            KVM's backends are checked by doing the real thing on a scratch VM: programming and arming \
            one route (kvm), injecting one MSI with KVM_SIGNAL_MSI (relay).
            """)

    @Flag(help: "Print the report as JSON.")
    var json = false

    mutating func run() throws {
        let report = IrqFdProbe.Probe.run()
        print(json ? report.json() : report.table())
    }
}
