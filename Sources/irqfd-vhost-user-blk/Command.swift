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

    @OptionGroup var options: BlockServerOptions

    func run() throws {
        try VhostUserBlkBackend.serve(
            image: options.image, socketPath: options.socket, queues: options.queues, readOnly: options.readOnly)
    }
}
#endif
