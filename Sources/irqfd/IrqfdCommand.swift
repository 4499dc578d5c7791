import ArgumentParser

/// The `irqfd` command: run guests, show the demo, probe the machine, benchmark.
@main
struct IrqfdCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "irqfd",
        abstract: "Kernel-mediated MSI delivery (irqfd) for VMMs, shown on real KVM guests.",
        subcommands: [Run.self, Demo.self, Probe.self, BenchCommand.self])
}
