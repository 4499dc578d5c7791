#if os(Linux)
public import TinyVM
public import Virtio

extension TinyVM {
    /// Stops the vCPUs and waits for them, then shuts `disk` down as a VMM does: reset
    /// (the backend stops its rings), hang up, stop `backend`.
    public func stop(disk: VirtioBlkDevice, backend: BlockBackend) {
        stop()
        wait()
        disk.writeStatus(0)
        disk.frontend.close()
        backend.stop()
    }
}
#endif
