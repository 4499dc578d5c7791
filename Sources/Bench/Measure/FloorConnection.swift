#if os(Linux)
import VhostUser

/// A floor's connection: the host drives a back-end itself, with no guest and
/// no VMM. Connects to `socketPath`, negotiates VIRTIO_F_VERSION_1 and as
/// many of `protocolFeatures` as the back-end offers, and hands it 1 MiB of
/// memfd memory (SET_MEM_TABLE) for the floor's rings and buffers.
func connectFloor(
    socketPath: String, protocolFeatures: UInt64
) throws(VhostUserError) -> (frontend: VhostUserFrontend, memory: MemfdGuestMemory) {
    let frontend = try VhostUserFrontend(socketPath: socketPath)
    let features = try frontend.handshake(wantedProtocolFeatures: protocolFeatures)
    try frontend.setFeatures(VhostUserFeature.version1 | (features & VhostUserFeature.protocolFeatures))
    let memory = try MemfdGuestMemory(size: 1 << 20)
    try frontend.setMemTable([memory.region])
    return (frontend, memory)
}
#endif
