import ArgumentParser

#if os(Linux)
import VhostUser
#endif

/// The `irqfd` command: run guests, show the demo, probe the machine, benchmark,
/// and serve the embedded vhost-user-blk back-end the others start.
@main
struct IrqfdCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "irqfd",
        abstract: "Kernel-mediated MSI delivery (irqfd) for VMMs, shown on real KVM guests.",
        subcommands: [Run.self, Demo.self, Probe.self, BenchCommand.self, VhostUserBlkCommand.self])

    /// Declares this executable the embedded back-end's host, then runs the command:
    /// `irqfd demo`, `run` and `bench` start their back-end as `irqfd vhost-user-blk`.
    static func main() {
        #if os(Linux)
        VhostUserBackendProcess.servesEmbeddedBackend(asSubcommand: [VhostUserBlkCommand.configuration.commandName!])
        #endif
        main(nil)
    }
}
