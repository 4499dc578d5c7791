import ArgumentParser
import Foundation
import PCI
import TinyVM
import Virtio

/// `irqfd run`'s virtio-net options: a device at 00:02.0 served by a running
/// vhost-user-net backend, or by a dpdk-testpmd the VMM starts and stops.
struct NetRunOptions: ParsableArguments {
    @Option(
        name: .customLong("vhost-user-net"),
        help: "Add a virtio-net device (00:02.0) served by the vhost-user backend listening on this Unix socket.")
    var vhostUserNet: String?

    @Flag(
        help: """
            Add a virtio-net device (00:02.0) served by a dpdk-testpmd the VMM starts (io forwarding, \
            looped back) and stops at exit.
            """)
    var testpmd = false

    @Option(help: "The virtio-net device's MAC address. (default: 52:54:00:12:34:56)")
    var mac: String?

    /// Whether a network device was asked for.
    var isRequested: Bool { vhostUserNet != nil || testpmd }

    /// Checks the net options against each other and `queues` (queue pairs for a network device).
    func validate(queues: Int, blockRequested: Bool) throws {
        if vhostUserNet != nil, testpmd {
            throw ValidationError("--vhost-user-net and --testpmd are alternatives: give one")
        }
        if mac != nil, !isRequested { throw ValidationError("--mac needs --vhost-user-net or --testpmd") }
        guard isRequested else { return }
        if blockRequested {
            throw ValidationError("one vhost-user device per VM: a block or a network device, not both")
        }
        if let mac, VirtioNet.parseMAC(mac) == nil {
            throw ValidationError("--mac must be six hex bytes such as 52:54:00:12:34:56, not '\(mac)'")
        }
        guard (1...VirtioNet.maxQueuePairs).contains(queues) else {
            let range = "1...\(VirtioNet.maxQueuePairs)"
            throw ValidationError("--queues must be \(range) queue pairs for virtio-net, not \(queues)")
        }
    }

    /// Starts testpmd when asked and plugs the network device into `vm`, its
    /// connection within the run's `deadline`; the caller stops both at exit
    /// (the device first: a backend stopped at exit is not a backend lost).
    func attach(
        to vm: TinyVM, queuePairs: Int, delivery: InterruptDelivery, deadline: RunDeadline
    ) throws -> (NetBackend?, VirtioNetDevice) {
        var backend: NetBackend?
        if testpmd {
            do { backend = try NetBackend(queuePairs: queuePairs) } catch {
                FileHandle.standardError.write(Data("irqfd run: \(error)\n".utf8))
                throw ExitCode(1)
            }
            let pairs = "\(queuePairs) queue pair\(queuePairs == 1 ? "" : "s")"
            let pid = backend?.process.processIdentifier ?? 0
            let line = "irqfd run: virtio-net 00:02.0 served by dpdk-testpmd (pid \(pid), \(pairs))\n"
            FileHandle.standardError.write(Data(line.utf8))
        }
        guard let socket = vhostUserNet ?? backend?.socketPath else { throw ExitCode(1) }
        let address = mac.flatMap(VirtioNet.parseMAC) ?? VirtioNet.defaultMAC
        do {
            let device = try deadline.attach(
                try VirtioNet(queuePairs: queuePairs, mac: address), to: vm, socket: socket, delivery: delivery)
            return (backend, device)
        } catch {
            backend?.stop()
            throw error
        }
    }
}
