#if os(Linux)
import TestSupport
import Testing
import Virtio

/// Records what `device` owns: its backend connection's socket, and its
/// kick and call eventfds, to check that its release closes them.
func descriptorsOwned<DeviceType>(
    by device: VirtioPCIDevice<DeviceType>, sourceLocation: SourceLocation = #_sourceLocation
) throws -> [OwnedDescriptor] {
    let socket = try #require(device.frontend.socket, sourceLocation: sourceLocation)
    return ([socket] + device.ownedDescriptors).map { OwnedDescriptor($0.rawValue) }
}

/// Expects every one of `owned` closed within 2 s of the device's release:
/// its deinit closes them here, or on a device thread just after if that
/// thread held the device at this moment (it does for the length of one
/// call). The records pin each eventfd, so a new eventfd on a freed number
/// cannot pass for it. `round` names the round in a failure.
func expectClosedAfterRelease(
    _ owned: [OwnedDescriptor], round: Int, sourceLocation: SourceLocation = #_sourceLocation
) {
    _ = eventually(.seconds(2)) { !owned.contains(where: \.isOpen) }
    for d in owned {
        #expect(
            !d.isOpen, "round \(round): descriptor \(d.fd) still open 2 s after release", sourceLocation: sourceLocation
        )
    }
}
#endif
