import ArgumentParser
import Foundation
import PCI
import TinyVM
import Virtio

/// `irqfd run GUEST.bin`: the tiny VMM's contract (TinyVM documentation, Sources/TinyVM/Documentation.docc/TinyVMContract.md).
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a flat 16-bit guest image on KVM (loaded at 0x1000, big real mode).",
        discussion: """
            Exits with the status the guest writes to port 0xF4; 124 on timeout, 125 on a guest fault, 1 on a VMM error. \
            The PCI test device (00:01.0; registers at 0xFE000000, MSI-X table and PBA at 0xFE010000) \
            is always present. \
            With --update-socket a successor (`irqfd run --incoming PATH`) can take the running guest over; \
            this process then exits 0.
            """)

    @Argument(help: "The flat binary image to load at guest-physical 0x1000 (none with --incoming).")
    var image: String?

    @Option(help: "Number of vCPUs (1...8), all starting at the entry point.")
    var cpus = 1

    @Option(help: "Stop the guest after this many seconds.")
    var timeout: Double = 10

    @Option(
        help: "How the PCI test device's interrupts reach the guest: irqfd, relay or userspace. (default: irqfd)",
        transform: parseDelivery)
    var delivery: InterruptDelivery = .irqfd

    @Option(help: "MSI-X vectors of the PCI test device at 00:01.0 (1...2048).")
    var vectors = 8

    @Option(
        name: .customLong("vhost-user-blk"),
        help: "Add a virtio-blk device (00:02.0) served by the vhost-user backend listening on this Unix socket.")
    var vhostUserBlk: String?

    @Option(
        help:
            "Add a virtio-blk device (00:02.0) serving this raw image; the VMM starts the backend and stops it at exit."
    )
    var disk: String?

    @Option(
        help:
            "The backend --disk starts: qemu-storage-daemon or embedded. (default: qemu-storage-daemon when installed, else embedded)",
        transform: parseDiskBackend)
    var diskBackend: DiskBackendKind?

    @Option(
        help:
            "virtio-blk queues (1...8), virtio-net queue pairs (1...3), or virtio-fs request queues (1...7); more than 1 offers MQ."
    )
    var queues = 1

    @Option(
        name: .customLong("update-socket"),
        help: "Listen on this Unix socket for a successor VMM (`irqfd run --incoming PATH`) to hand the guest to.")
    var updateSocket: String?

    @Option(
        help:
            """
            Take over the guest of the VMM listening on this update socket: no image; RAM, vCPUs and devices \
            come over. --timeout counts from the takeover.
            """
    )
    var incoming: String?

    @OptionGroup(title: "virtio-net")
    var net: NetRunOptions

    @OptionGroup var fileSystem: FileSystemOptions

    func validate() throws {
        if (image == nil) == (incoming == nil) {
            throw ValidationError("give a guest image or --incoming PATH, not both")
        }
        if incoming != nil || updateSocket != nil, net.isRequested || fileSystem.isRequested {
            throw ValidationError("live update moves the PCI test device and virtio-blk: not virtio-net or virtio-fs")
        }
        if incoming != nil, vhostUserBlk != nil || disk != nil {
            throw ValidationError("--incoming takes its devices from the running VMM: no --vhost-user-blk or --disk")
        }
        if vhostUserBlk != nil, disk != nil {
            throw ValidationError("--vhost-user-blk and --disk are alternatives: give one")
        }
        if diskBackend != nil, disk == nil { throw ValidationError("--disk-backend needs --disk") }
        if fileSystem.isRequested, vhostUserBlk != nil || disk != nil || net.isRequested {
            throw ValidationError("one vhost-user device per VM: virtio-fs, virtio-net or virtio-blk")
        }
        try net.validate(queues: queues, blockRequested: vhostUserBlk != nil || disk != nil)
        guard net.isRequested || (1...VirtioBlkDevice.maxQueues).contains(queues) else {
            throw ValidationError("--queues must be 1...\(VirtioBlkDevice.maxQueues), not \(queues)")
        }
    }

    mutating func run() throws {
        if let incoming {
            try runIncoming(from: incoming)
            return
        }
        guard let image else { throw ExitCode(1) }  // validate() requires one of the two
        let bytes: [UInt8]
        do { bytes = try readImage(image) } catch let error as ImageError {
            FileHandle.standardError.write(Data("irqfd run: \(error.message)\n".utf8))
            throw ExitCode(1)
        }
        // The timeout counts from here: a backend's handshake is part of the run.
        let deadline = RunDeadline(seconds: timeout)
        do {
            let vm = try TinyVM(.init(cpus: cpus, echoConsole: true))
            try vm.load(bytes)
            let testDevice = try MsixTestDevice.attach(to: vm, vectors: vectors, delivery: delivery)
            var backend: BlockBackend?
            var blk: VirtioBlkDevice?
            defer {
                blk?.disconnect()  // a backend stopped at exit is not a backend lost
                backend?.stop()
            }
            if let disk {
                let kind = diskBackend ?? .preferred
                do { backend = try BlockBackend(kind: kind, image: disk, queues: queues) } catch {
                    FileHandle.standardError.write(Data("irqfd run: \(error)\n".utf8))
                    throw ExitCode(1)
                }
                FileHandle.standardError.write(
                    Data(
                        "irqfd run: virtio-blk 00:02.0 served by \(kind) (\(disk), \(queues) queue\(queues == 1 ? "" : "s"))\n"
                            .utf8))
            }
            if let socket = vhostUserBlk ?? backend?.socketPath {
                blk = try deadline.attach(try VirtioBlk(queues: queues), to: vm, socket: socket, delivery: delivery)
            }
            var netBackend: NetBackend?
            var netDevice: VirtioNetDevice?
            defer {
                netDevice?.disconnect()
                netBackend?.stop()
            }
            if net.isRequested {
                (netBackend, netDevice) = try net.attach(
                    to: vm, queuePairs: queues, delivery: delivery, deadline: deadline)
            }
            let fs = try fileSystem.attach(to: vm, requestQueues: queues, delivery: delivery, deadline: deadline)
            defer { fs?.close() }
            vm.start()
            let source = try updateSocket.map { path in
                try startLiveUpdates(
                    vm: vm, at: path,
                    devices: [testDevice] + (blk.map { [LiveUpdateVirtioDevice($0, name: "virtio-blk")] } ?? [])
                        + (backend.map { [DiskBackendHandOff($0)] } ?? []),
                    routes: [])
            }
            throw ExitCode(superviseRun(vm, liveUpdates: source, timeout: deadline.remaining))
        } catch let error as TinyVMError {
            FileHandle.standardError.write(Data("irqfd run: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct ImageError: Error {
    var message: String
}

/// Reads a guest image, with a one-line reason for each way it can be unusable.
func readImage(_ path: String) throws -> [UInt8] {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw ImageError(message: "\(path): no such file")
    }
    guard !isDirectory.boolValue else { throw ImageError(message: "\(path) is a directory, not a guest image") }
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ImageError(message: "\(path): cannot be read")
    }
    guard !data.isEmpty else { throw ImageError(message: "\(path) is empty") }
    return [UInt8](data)
}

/// Parses `--delivery`, naming the choices when the value is not one of them.
func parseDelivery(_ text: String) throws -> InterruptDelivery {
    guard let delivery = InterruptDelivery(rawValue: text) else {
        throw ValidationError(
            "--delivery must be one of \(InterruptDelivery.allCases.map(\.rawValue).joined(separator: ", ")), not '\(text)'"
        )
    }
    return delivery
}

/// Parses `--disk-backend`, naming the choices when the value is not one of them.
func parseDiskBackend(_ text: String) throws -> DiskBackendKind {
    guard let kind = DiskBackendKind(rawValue: text) else {
        throw ValidationError(
            "--disk-backend must be one of \(DiskBackendKind.allCases.map(\.rawValue).joined(separator: ", ")), not '\(text)'"
        )
    }
    return kind
}
