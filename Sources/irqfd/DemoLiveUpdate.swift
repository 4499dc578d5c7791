import Foundation
import Glibc
import PCI
import TinyVM
import Virtio

/// The demo's live-update section: a guest keeps reads in flight on
/// virtio-blk while its VMM process is replaced, twice by `irqfd run
/// --incoming` processes started from this very executable and once more by
/// this process taking the guest back. Each hand-off's pause and vhost-user
/// message count are the successor's own hand-off line, read back, not
/// figures of this process; the guest checks every completion itself.
struct LiveUpdateDemo {
    let delivery: InterruptDelivery
    typealias L = VirtioBlkStressLayout

    struct Failure: Error { var message: String }

    /// Hand-offs to `irqfd run --incoming` processes before this process takes the guest back.
    static let processes = 2
    /// Reads the guest keeps in flight, and the sectors they cycle over.
    static let inFlight = 16
    static let sectors = 256

    func run() throws {
        let kind = DiskBackendKind.preferred
        let name = "irqfd-demo-lu-\(getpid())"
        let imagePath = NSTemporaryDirectory() + name + ".img"
        var image = [UInt8](repeating: 0, count: Self.sectors * 512)
        for i in image.indices {
            image[i] = withUnsafeBytes(of: L.imageWord(sector: i / 512, dword: (i % 512) / 4).littleEndian) {
                $0[i % 4]
            }
        }
        guard FileManager.default.createFile(atPath: imagePath, contents: Data(image)) else {
            throw Failure(message: "cannot create \(imagePath)")
        }
        func socket(_ generation: Int) -> String { NSTemporaryDirectory() + "\(name)-\(generation).sock" }
        func errors(_ generation: Int) -> String { NSTemporaryDirectory() + "\(name)-\(generation).err" }
        defer {
            try? FileManager.default.removeItem(atPath: imagePath)
            for generation in 0...Self.processes + 1 {
                try? FileManager.default.removeItem(atPath: socket(generation))
                try? FileManager.default.removeItem(atPath: errors(generation))
            }
        }
        let backend: BlockBackend
        do { backend = try BlockBackend(kind: kind, image: imagePath) } catch { throw Failure(message: "\(error)") }
        defer { backend.stop() }

        let vm: TinyVM
        let device: VirtioBlkDevice
        do {
            vm = try TinyVM(.init(cpus: 2))
            device = try VirtioBlkDevice.attach(to: vm, socketPath: backend.socketPath, delivery: delivery)
            try vm.load(GuestProgram.virtioBlkStress.image)
        } catch { throw Failure(message: "cannot start the guest: \(error)") }
        // The guest's counters stay readable here whichever process runs it: guest RAM is one memfd.
        let memory = vm.memory
        func word(_ address: UInt64) -> Int { Int(memory.read32(at: address)) }
        memory.write32(UInt32(L.maxTotal - 1), at: L.total)  // it reads on until the demo ends it
        memory.write32(UInt32(Self.inFlight), at: L.inFlight)
        memory.write32(UInt32(Self.sectors - 1), at: L.sectorMask)
        vm.start()
        var processes: [Process] = []
        var final: LiveUpdateIncoming?
        defer {
            for process in processes where process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
            vm.stop()
            _ = vm.wait()
            if let final {
                final.vm.stop()
                _ = final.vm.wait()
                // The backend stops next: not a backend lost.
                for case let blk as LiveUpdateVirtioDevice<VirtioBlk> in final.devices { blk.device.disconnect() }
            }
        }
        guard vm.waitUntil(timeout: .seconds(30), { memory.read32(at: L.phase) >= 1 }) else {
            throw Failure(message: "the guest did not put its reads in flight: \(vm.wait(timeout: .zero))")
        }
        let source: LiveUpdateSource
        do {
            source = try LiveUpdateSource(
                vm: vm, listeningAt: socket(0), devices: [LiveUpdateVirtioDevice(device, name: "virtio-blk")]
            ) { line in print("    this process: \(line)") }
        } catch { throw Failure(message: "cannot listen for a successor: \(error)") }
        source.start()
        defer { source.stop() }
        print(
            """

            Live update: the VMM process is replaced under a running guest; its virtio-blk I/O goes on.
            The guest keeps \(Self.inFlight) reads in flight on 00:02.0 (\(kind)) and checks every completion.
            Each successor, irqfd run --incoming, makes its VM first; then, in the pause, it takes the vCPUs,
            the device and its descriptors over a Unix socket. The backend keeps its connection and hears nothing.

            """)
        /// Lets the guest read on for a while, and says how far it got.
        func readOn() throws -> Int {
            let start = word(L.completed)
            let deadline = ContinuousClock.now + .seconds(30)
            while word(L.completed) < start + 4 * Self.inFlight {
                guard ContinuousClock.now < deadline else {
                    throw Failure(message: "the guest's reads stopped at \(word(L.completed)) completed")
                }
                usleep(1_000)
            }
            return word(L.completed)
        }
        let executable = URL(
            fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                ?? "/proc/self/exe")
        var owner = "this process"
        for generation in 1...Self.processes {
            let done = try readOn()
            let process = Process()
            process.executableURL = executable
            process.arguments = [
                "run", "--incoming", socket(generation - 1), "--update-socket", socket(generation), "--timeout", "60",
            ]
            _ = FileManager.default.createFile(atPath: errors(generation), contents: nil)
            do {
                process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errors(generation)))
                process.standardOutput = FileHandle.nullDevice
                process.standardInput = FileHandle.nullDevice
                try process.run()
            } catch { throw Failure(message: "cannot start irqfd run --incoming: \(error)") }
            processes.append(process)
            let line = try handOffLine(errors(generation), from: process)
            report(generation, from: owner, to: "pid \(process.processIdentifier)", line: line, completed: done)
            owner = "pid \(process.processIdentifier)"
        }
        // The last hand-off comes back here, so this process ends the guest's run.
        let done = try readOn()
        do {
            final = try LiveUpdateIncoming.takeOver(from: socket(Self.processes), kinds: Run.liveUpdateKinds)
        } catch { throw Failure(message: "taking the guest back: \(error)") }
        report(Self.processes + 1, from: owner, to: "this process", line: final?.summary ?? "", completed: done)
        for (index, process) in processes.enumerated() {
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                let text = (try? String(contentsOfFile: errors(index + 1), encoding: .utf8)) ?? ""
                throw Failure(message: "pid \(process.processIdentifier) exited \(process.terminationStatus): \(text)")
            }
        }
        let total = try readOn()
        let (bad, badIDs, duplicates) = (word(L.badStatus) + word(L.badData), word(L.badIDs), word(L.duplicates))
        print(
            "Guest: \(total) reads completed across \(Self.processes + 1) hand-offs; "
                + "wrong data or status: \(bad), unknown ids: \(badIDs), completed twice: \(duplicates).")
        guard bad == 0, badIDs == 0, duplicates == 0 else {
            throw Failure(message: "the guest saw wrong completions")
        }
    }

    /// The successor's hand-off line, from its standard error (at most 10 s);
    /// the whole of it when the process ended without one.
    private func handOffLine(_ path: String, from process: Process) throws -> String {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            if let end = text.firstIndex(of: "\n") {
                let line = String(text[..<end])
                guard line.hasPrefix("live update: paused") else { throw Failure(message: "the successor: \(text)") }
                return line
            }
            if !process.isRunning { throw Failure(message: "the successor exited: \(text)") }
            usleep(1_000)
        }
        throw Failure(message: "no hand-off line from pid \(process.processIdentifier) within 10 s")
    }

    /// One hand-off, from the successor's line `live update: paused <µs> µs; <n> routes, <q> queues, <m>
    /// vhost-user messages`.
    private func report(_ generation: Int, from: String, to: String, line: String, completed: Int) {
        let figures = line.wholeMatch(
            of: #/live update: paused (\d+) µs; (\d+) routes, (\d+) queues, (\d+) vhost-user messages/#)
        let what = figures.map { "paused \($0.1) µs; vhost-user messages: \($0.4)" } ?? line
        print(
            "hand-off \(generation): \(from) -> \(to)".padding(toLength: 56, withPad: " ", startingAt: 0)
                + "\(what); \(completed) reads done")
    }
}
