import ArgumentParser
import Foundation
import PCI
import TinyVM
import Virtio

/// The run's deadline as `irqfd run` spends it before the guest starts: a
/// backend's handshake is part of the run, so `--timeout` bounds it too.
struct RunDeadline {
    /// When the run's `--timeout` expires.
    let instant: ContinuousClock.Instant
    /// `--timeout`, for the line a timeout prints.
    let seconds: Double

    init(seconds: Double) {
        self.seconds = seconds
        instant = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    }

    /// What is left of the run.
    var remaining: Duration { max(.zero, instant - .now) }

    /// Makes a device of `type`, connects it to the vhost-user backend at
    /// `socket` and plugs it into `vm`. The connection has one deadline: its
    /// usual 5 s, or what is left of the run. A failure once the run's time
    /// is up exits 124 with a line naming the socket; any other exits 1.
    func attach<DeviceType: VirtioDeviceType>(
        _ type: @autoclosure () throws(VirtioError) -> DeviceType, to vm: TinyVM, socket: String,
        delivery: InterruptDelivery
    ) throws -> VirtioPCIDevice<DeviceType> {
        do {
            return try VirtioPCIDevice.attach(
                to: vm, deviceType: try type(), socketPath: socket, delivery: delivery,
                connectTimeout: min(.seconds(5), remaining))
        } catch {
            guard ContinuousClock.now < instant else {
                FileHandle.standardError.write(
                    Data("irqfd run: timed out after \(seconds) s connecting to \(socket): \(error)\n".utf8))
                throw ExitCode(124)
            }
            FileHandle.standardError.write(Data("irqfd run: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
