import ArgumentParser
import Foundation
import PCI
import TinyVM
import Virtio

/// `irqfd run`'s virtio-fs options: a virtio-fs device (00:02.0) served by a
/// running vhost-user-fs backend, or by a virtiofsd the VMM starts on a host
/// directory and stops at exit. `--queues` (the run's) is the number of
/// request queues.
struct FileSystemOptions: ParsableArguments {
    @Option(
        name: .customLong("vhost-user-fs"),
        help: "Add a virtio-fs device (00:02.0) served by the vhost-user-fs backend listening on this Unix socket.")
    var vhostUserFs: String?

    @Option(
        help: """
            Add a virtio-fs device (00:02.0) sharing this host directory; the VMM starts virtiofsd on it and stops \
            it at exit.
            """)
    var share: String?

    @Option(help: "The virtio-fs tag (1...36 bytes) the guest mounts by; needed with --vhost-user-fs or --share.")
    var tag: String?

    /// Whether a virtio-fs device was asked for.
    var isRequested: Bool { vhostUserFs != nil || share != nil }

    func validate() throws {
        if vhostUserFs != nil, share != nil {
            throw ValidationError("--vhost-user-fs and --share are alternatives: give one")
        }
        if isRequested, tag == nil { throw ValidationError("--vhost-user-fs and --share need --tag") }
        if tag != nil, !isRequested { throw ValidationError("--tag needs --vhost-user-fs or --share") }
    }

    /// The device and the virtiofsd started for it, released together at exit.
    final class Attachment {
        let backend: FileSystemBackend?
        let device: VirtioFsDevice

        init(backend: FileSystemBackend?, device: VirtioFsDevice) {
            self.backend = backend
            self.device = device
        }

        /// Closes the connection first: a backend stopped at exit is not a backend lost.
        func close() {
            device.disconnect()
            backend?.stop()
        }
    }

    /// Starts virtiofsd when `--share` asks for it and plugs the device into
    /// `vm`, its connection within the run's `deadline`; nil when no virtio-fs
    /// device was asked for. Failures are printed and end the run with status
    /// 1 (124 when the run's time ran out).
    func attach(
        to vm: TinyVM, requestQueues: Int, delivery: InterruptDelivery, deadline: RunDeadline
    ) throws -> Attachment? {
        guard isRequested, let tag else { return nil }
        var backend: FileSystemBackend?
        if let share {
            do { backend = try FileSystemBackend(sharedDirectory: share) } catch {
                FileHandle.standardError.write(Data("irqfd run: \(error)\n".utf8))
                throw ExitCode(1)
            }
            FileHandle.standardError.write(
                Data("irqfd run: virtio-fs 00:02.0 served by virtiofsd (\(share), tag \(tag))\n".utf8))
        }
        guard let socket = vhostUserFs ?? backend?.socketPath else { return nil }
        do {
            let device = try deadline.attach(
                try VirtioFs(tag: tag, requestQueues: requestQueues), to: vm, socket: socket, delivery: delivery)
            return Attachment(backend: backend, device: device)
        } catch {
            backend?.stop()
            throw error
        }
    }
}
