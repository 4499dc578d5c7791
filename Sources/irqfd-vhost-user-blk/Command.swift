// irqfd-vhost-user-blk IMAGE --socket PATH [--queues N] [--read-only]
//
// A vhost-user-blk back-end serving a raw image file (vhost-user.rst; virtio
// 1.2 section 5.2): the device side of irqfd, written in Swift. It receives
// each queue's call eventfd and signals it when requests complete. The same
// back-end runs as `irqfd vhost-user-blk`; this standalone executable keeps
// the command line tools outside this package start it with.
#if os(Linux)
import ArgumentParser
import VhostUserBlkBackend

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

    func validate() throws {
        guard (1...8).contains(queues) else { throw ValidationError("--queues must be in 1...8") }
    }

    func run() throws {
        try VhostUserBlkBackend.serve(image: image, socketPath: socket, queues: queues, readOnly: readOnly)
    }
}
#endif
