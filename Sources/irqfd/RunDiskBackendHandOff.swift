import Foundation
import Glibc
import TinyVM
import Virtio

// The backend process `irqfd run --disk` started, handed to the successor
// with the guest: the old process exits without stopping it (the successor's
// device goes on over the same connection), and the successor stops it at the
// end of its own run, as the VMM that started it would have.

/// A `--disk` backend process as it moves: its process ID, socket and socket
/// directory travel as state (no descriptor).
final class DiskBackendHandOff: LiveUpdateDevice, IncomingLiveUpdateDevice {
    static let name = "disk-backend"

    struct State: Codable {
        var pid: Int32
        var socketPath: String
        var directory: String
    }

    let state: State

    init(_ backend: BlockBackend) {
        state = State(
            pid: backend.processIdentifier, socketPath: backend.socketPath, directory: backend.socketDirectory)
    }

    init(state: State) { self.state = state }

    /// How a successor takes the backend over.
    static let kind = LiveUpdateDeviceKind(name: name) { (_, bytes, descriptors) throws(LiveUpdateError) in
        guard descriptors.isEmpty, let state = try? JSONDecoder().decode(State.self, from: Data(bytes)) else {
            throw .device(name: name, reason: "undecodable state")
        }
        return DiskBackendHandOff(state: state)
    }

    var liveUpdateName: String { Self.name }

    func freeze() throws(LiveUpdateError) -> FrozenDevice {
        guard let bytes = try? JSONEncoder().encode(state) else {
            throw .device(name: Self.name, reason: "encoding")
        }
        return FrozenDevice(state: Array(bytes), descriptors: [], routes: 0)
    }

    func thaw() {}
    func release() {}
    func start() throws(LiveUpdateError) {}
    var device: any LiveUpdateDevice { self }
    var routes: Int { 0 }
    var queues: Int { 0 }
    var vhostUserMessages: Int { 0 }

    /// Whether `pid` is still the backend: its command line names the socket
    /// (a process ID freed and reused by another process is left alone).
    private var isBackend: Bool {
        guard let cmdline = FileManager.default.contents(atPath: "/proc/\(state.pid)/cmdline") else { return false }
        return String(decoding: cmdline, as: UTF8.self).contains(state.socketPath)
    }

    /// Stops the backend as `BlockBackend.stop()` does: SIGTERM, SIGKILL
    /// after 5 s; removes its socket and directory. It is not this process's
    /// child, so its end is seen in /proc, not waited for.
    func stop() {
        if isBackend {
            kill(state.pid, SIGTERM)
            let deadline = ContinuousClock.now + .seconds(5)
            while isBackend, ContinuousClock.now < deadline { usleep(5_000) }
            if isBackend { kill(state.pid, SIGKILL) }
        }
        unlink(state.socketPath)
        rmdir(state.directory)
    }
}
