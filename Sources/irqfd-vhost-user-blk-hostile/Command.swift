// irqfd-vhost-user-blk-hostile IMAGE --socket PATH [--queues N] [--read-only]
//                              --misbehave MODE [--misbehave-on MESSAGE]
//
// Test equipment, in no product: the embedded vhost-user-blk back-end with
// a misbehaviour installed through its test hooks, so that the VMM's tests
// can show it refuses each broken reply or ring and stays up. The shipped
// back-end (`irqfd-vhost-user-blk`, `irqfd vhost-user-blk`) has no such mode.
#if os(Linux)
import ArgumentParser
import VhostUser
import VhostUserBlkBackend

@main
struct HostileVhostUserBlk: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "irqfd-vhost-user-blk-hostile",
        abstract: "Test equipment: the vhost-user-blk back-end, breaking the protocol on purpose.")

    @Argument(help: "The raw image file.")
    var image: String

    @Option(help: "The Unix socket to listen on.")
    var socket: String

    @Option(help: "Queues served (1...8).")
    var queues: Int = 1

    @Flag(help: "Serve the image read-only (VIRTIO_BLK_F_RO).")
    var readOnly = false

    @Option(help: "How to break the protocol: \(Misbehaviour.allCases.map(\.rawValue).joined(separator: ", ")).")
    var misbehave: Misbehaviour

    @Option(
        help: """
            The message whose reply wrong-size, wrong-request, extra-fds, no-reply and close-mid-message \
            break (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_CONFIG, GET_VRING_BASE, or any \
            message's REPLY_ACK).
            """)
    var misbehaveOn = "GET_FEATURES"

    func validate() throws {
        guard vhostUserRequest(named: misbehaveOn) != nil else {
            throw ValidationError("--misbehave-on: no message \(misbehaveOn)")
        }
        guard (1...8).contains(queues) else { throw ValidationError("--queues must be in 1...8") }
    }

    func run() throws {
        let server = try BlockServer(image: image, readOnly: readOnly, queues: queues)
        server.hooks = MisbehavingHooks(mode: misbehave, target: vhostUserRequest(named: misbehaveOn)!)
        try server.serve(socketPath: socket)
    }
}
#endif
