import ArgumentParser
import Foundation
import Glibc
import IrqFdKVM
import TinyVM
import Virtio

// `irqfd run --incoming PATH` and `--update-socket PATH`: a new VMM process
// takes a running guest over from another, which then exits 0; the line each
// hand-off prints, the failure line, and the run's end either way.

extension Run {
    /// The devices a successor knows how to rebuild.
    static let liveUpdateKinds = [
        MsixTestDevice.liveUpdateKind, LiveUpdateVirtioDevice<VirtioBlk>.kind(name: "virtio-blk"),
        DiskBackendHandOff.kind,
    ]

    /// Takes the guest over from the VMM listening at `path`, prints the
    /// hand-off line, and runs it until its own end (`--timeout` counts from here).
    func runIncoming(from path: String) throws {
        let taken: LiveUpdateIncoming
        do {
            taken = try LiveUpdateIncoming.takeOver(from: path, kinds: Self.liveUpdateKinds, echoConsole: true)
        } catch {
            FileHandle.standardError.write(Data("irqfd run: live update failed: \(error)\n".utf8))
            throw ExitCode(1)
        }
        // The next successor may connect as soon as it reads the hand-off
        // line, so the update socket listens before the line is printed.
        let source: Result<LiveUpdateSource?, any Error> = Result {
            try updateSocket.map { path in
                try startLiveUpdates(vm: taken.vm, at: path, devices: taken.devices, routes: taken.routes)
            }
        }
        FileHandle.standardError.write(Data("\(taken.summary)\n".utf8))
        let updates: LiveUpdateSource?
        do { updates = try source.get() } catch {
            FileHandle.standardError.write(Data("irqfd run: \(error)\n".utf8))
            taken.vm.stop()
            _ = taken.vm.wait()
            throw ExitCode(1)
        }
        // --timeout counts from the takeover.
        let status = superviseRun(taken.vm, liveUpdates: updates, timeout: RunDeadline(seconds: timeout).remaining)
        // The guest's run ended here: let the backend know, as a VMM that attached it does at exit.
        for case let blk as LiveUpdateVirtioDevice<VirtioBlk> in taken.devices { blk.device.disconnect() }
        // A backend the first VMM started (--disk) is this one's now: it stops it.
        for case let backend as DiskBackendHandOff in taken.devices { backend.stop() }
        throw ExitCode(status)
    }

    /// Listens at `path` for a successor to the running `vm`.
    func startLiveUpdates(
        vm: TinyVM, at path: String, devices: [any LiveUpdateDevice], routes: [KVMIrqFdRoute]
    ) throws -> LiveUpdateSource {
        let source = try LiveUpdateSource(vm: vm, listeningAt: path, devices: devices, routes: routes) { line in
            FileHandle.standardError.write(Data("irqfd run: \(line)\n".utf8))
        }
        source.start()
        return source
    }

    /// Waits (up to `limit`) for the running `vm` to end and returns the exit
    /// status: 0 once a successor took the guest over, else the guest's outcome's.
    func superviseRun(_ vm: TinyVM, liveUpdates source: LiveUpdateSource?, timeout limit: Duration) -> Int32 {
        let outcome = vm.wait(timeout: limit)
        if let source, let completion = source.waitUntilSettled() {
            // Handed off: the devices, their backend connections and a backend
            // this process started are the successor's now. Exit without
            // running the teardown that would disconnect or stop them.
            Glibc.exit(completion == .takenOver ? 0 : 1)
        }
        if case .exited = outcome {
        } else {
            FileHandle.standardError.write(Data("irqfd run: \(outcome)\n".utf8))
        }
        return outcome.exitStatus
    }
}
