// irqfd-vhost-user-blk IMAGE --socket PATH [--queues N] [--read-only]
//                      [--misbehave MODE [--misbehave-on MESSAGE]]
//
// A vhost-user-blk back-end serving a raw image file (vhost-user.rst; virtio
// 1.2 section 5.2): the device side of irqfd, written in Swift. It receives
// each queue's call eventfd and signals it when requests complete.
#if os(Linux)
import ArgumentParser
import Glibc
import VhostUser

@main
struct VhostUserBlk: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "irqfd-vhost-user-blk",
        abstract: "A vhost-user-blk back-end serving a raw image file on a Unix socket.")

    @Argument(help: "The raw image file.")
    var image: String

    @Option(help: "The Unix socket to listen on.")
    var socket: String

    @Option(help: "Queues served (1...8).")
    var queues: Int = 1

    @Flag(help: "Serve the image read-only (VIRTIO_BLK_F_RO).")
    var readOnly = false

    @Option(help: "Break the protocol on purpose, for tests: \(Misbehaviour.allCases.map(\.rawValue).joined(separator: ", ")).")
    var misbehave: Misbehaviour?

    @Option(help: "The message whose reply wrong-size, wrong-request, extra-fds, no-reply and close-mid-message break (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_CONFIG, GET_VRING_BASE, or any message's REPLY_ACK).")
    var misbehaveOn = "GET_FEATURES"

    func validate() throws {
        guard vhostUserRequest(named: misbehaveOn) != nil else { throw ValidationError("--misbehave-on: no message \(misbehaveOn)") }
        guard (1...8).contains(queues) else { throw ValidationError("--queues must be in 1...8") }
    }

    func run() throws {
        let server = try BlockServer(image: image, readOnly: readOnly, queues: queues)
        server.misbehaviour = misbehave
        server.misbehaveOn = vhostUserRequest(named: misbehaveOn)!
        try server.serve(socketPath: socket)
    }
}
#endif
