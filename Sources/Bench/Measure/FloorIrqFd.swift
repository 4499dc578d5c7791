#if os(Linux)
import CBenchFloor
import IrqFdCore
import IrqFdRouting

/// The C floor of mask + unmask: an eventfd made and assigned with plain C
/// calls (eventfd(2), KVM_IRQFD) on `gsi`, its MSI entry pushed with
/// KVM_SET_GSI_ROUTING next to the entries the library has pushed, so the
/// library's routes on the same VM keep working. Deassigned and closed at deinit.
final class FloorIrqFd {
    let vmfd: Int32
    let gsi: UInt32
    /// The eventfd, owned here.
    let eventfd: Int32

    private init(vmfd: Int32, gsi: UInt32, eventfd: Int32) {
        self.vmfd = vmfd
        self.gsi = gsi
        self.eventfd = eventfd
    }

    deinit {
        _ = bench_floor_irqfd(vmfd, eventfd, gsi, 1)
        bench_floor_close(eventfd)
    }

    /// Makes the floor's route on `gsi` of `vmfd` with `message`, the table
    /// being `kept` (the library's pushed entries) plus this one.
    static func arm(
        vmfd: Int32, gsi: UInt32, message: MsiMessage, beside kept: [RoutingEntry]
    ) throws(BenchError) -> FloorIrqFd {
        let efd = bench_floor_eventfd()
        guard efd >= 0 else { throw .floor("eventfd", efd) }
        var entries = kept.map { bench_floor_msi(gsi: $0.gsi, data: $0.msi.data, address: $0.msi.address) }
        entries.append(bench_floor_msi(gsi: gsi, data: message.data, address: message.address))
        let pushed = bench_floor_push(vmfd, entries, UInt32(entries.count), nil)
        guard pushed == 0 else {
            bench_floor_close(efd)
            throw .floor("KVM_SET_GSI_ROUTING", pushed)
        }
        let assigned = bench_floor_irqfd(vmfd, efd, gsi, 0)
        guard assigned == 0 else {
            bench_floor_close(efd)
            throw .floor("KVM_IRQFD", assigned)
        }
        return FloorIrqFd(vmfd: vmfd, gsi: gsi, eventfd: efd)
    }
}
#endif
