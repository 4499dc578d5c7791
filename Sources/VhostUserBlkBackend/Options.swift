package import ArgumentParser

/// The embedded back-end's command line, `IMAGE --socket PATH [--queues N]
/// [--read-only]`: one definition for `irqfd-vhost-user-blk`, `irqfd
/// vhost-user-blk` and the test equipment's hostile back-end, so the three
/// cannot drift apart. Plain arguments, no platform code: it parses anywhere.
package struct BlockServerOptions: ParsableArguments {
    @Argument(help: "The raw image file.")
    package var image: String

    @Option(help: "The Unix socket to listen on.")
    package var socket: String

    @Option(help: "Queues served (1...8).")
    package var queues: Int = 1

    @Flag(help: "Serve the image read-only (VIRTIO_BLK_F_RO).")
    package var readOnly = false

    package init() {}

    package func validate() throws {
        guard (1...8).contains(queues) else { throw ValidationError("--queues must be in 1...8") }
    }
}
