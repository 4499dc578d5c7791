/// Why a backend process the VMM starts for a device (a vhost-user block
/// backend, virtiofsd, dpdk-testpmd) could not be started.
public struct BackendStartError: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
}
