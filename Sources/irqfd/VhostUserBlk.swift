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

    @OptionGroup var options: BlockServerOptions

    func run() throws {
        #if os(Linux)
        try VhostUserBlkBackend.serve(
            image: options.image, socketPath: options.socket, queues: options.queues, readOnly: options.readOnly)
        #else
        throw ValidationError("the vhost-user-blk back-end runs on Linux only")
        #endif
    }
}
