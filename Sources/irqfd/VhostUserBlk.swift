import ArgumentParser
import VhostUserBlkBackend

/// `irqfd vhost-user-blk IMAGE --socket PATH [--queues N] [--read-only]`: the
/// embedded vhost-user-blk back-end, the same as the standalone
/// `irqfd-vhost-user-blk`. The VMM starts it from its own executable, so
/// `swift run irqfd demo` needs nothing it did not build.
struct VhostUserBlkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhost-user-blk",
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
        #if os(Linux)
        try VhostUserBlkBackend.serve(image: image, socketPath: socket, queues: queues, readOnly: readOnly)
        #else
        throw ValidationError("the vhost-user-blk back-end runs on Linux only")
        #endif
    }
}
