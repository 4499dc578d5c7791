#if os(Linux)
import CBenchFloor
import Glibc
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import KVM
import MSIX
import TinyVM

/// Which way interrupts go from the device to the guest, with eight
/// channels (one vector each) so throughput can keep several in flight.
///
/// Not Sendable: one benchmark thread makes, signals and closes it.
final class DeliveryPath {
    /// The path's name (`Targets.Path`).
    let name: String
    /// The floor it is compared with; nil for floors.
    let floor: String?
    /// The guest vector of each channel (all to vCPU 0).
    let vectors: [UInt8]
    private let signalChannel: (Int) -> Void
    private var teardown: (() -> Void)?

    init(
        name: String, floor: String?, vectors: [UInt8], signal: @escaping (Int) -> Void, teardown: @escaping () -> Void
    ) {
        self.name = name
        self.floor = floor
        self.vectors = vectors
        self.signalChannel = signal
        self.teardown = teardown
    }

    /// The device raises channel `channel` once.
    @inline(__always)
    func signal(_ channel: Int) { signalChannel(channel) }

    /// Disarms and releases everything the path made.
    func close() {
        teardown?()
        teardown = nil
    }

    deinit { close() }

    static let channels = 8

    static func message(_ vector: UInt8) -> MsiMessage { MsiMessage(destination: 0, vector: vector) }

    /// A route per vector from `newRoute`, each set to its vector's message;
    /// `what` names the routes in an error.
    static func routes<Route: IrqFdRoute>(
        _ vectors: [UInt8], _ what: String, newRoute: () throws(IrqFdError) -> Route
    ) throws(BenchError) -> [Route] {
        var routes: [Route] = []
        do throws(IrqFdError) {
            for vector in vectors {
                let route = try newRoute()
                try route.setMsi(message(vector))
                routes.append(route)
            }
        } catch { throw .library(what, error) }
        return routes
    }

    /// The KVM backend: one route per channel, signalled through its event.
    static func irqfd(_ guest: TinyVM, vectors: [UInt8]) throws(BenchError) -> DeliveryPath {
        var routes = try Self.routes(vectors, "irqfd route") { () throws(IrqFdError) in try guest.irqfd.newRoute() }
        let events = routes.map(\.event)
        return DeliveryPath(
            name: Targets.Path.irqfd, floor: Targets.Path.raw, vectors: vectors,
            signal: { events[$0].signal() }, teardown: { routes.removeAll() })
    }

    /// The floor of `irqfd`: eventfds, one KVM_SET_GSI_ROUTING and KVM_IRQFD
    /// from C. The push carries the library's live entries too, so the two
    /// paths share one table without the library noticing.
    static func raw(_ guest: TinyVM, vectors: [UInt8], gsis: [UInt32]) throws(BenchError) -> DeliveryPath {
        let vmfd = guest.vm.rawDescriptor
        var efds: [Int32] = []
        var entries = guest.irqfd.pushedEntries.map {
            bench_floor_msi(gsi: $0.gsi, data: $0.msi.data, address: $0.msi.address)
        }
        for (vector, gsi) in zip(vectors, gsis) {
            let fd = bench_floor_eventfd()
            guard fd >= 0 else { throw .floor("eventfd", fd) }
            efds.append(fd)
            let m = message(vector)
            entries.append(bench_floor_msi(gsi: gsi, data: m.data, address: m.address))
        }
        let pushed = bench_floor_push(vmfd, entries, UInt32(entries.count), nil)
        guard pushed == 0 else { throw .floor("KVM_SET_GSI_ROUTING", pushed) }
        for (fd, gsi) in zip(efds, gsis) {
            let r = bench_floor_irqfd(vmfd, fd, gsi, 0)
            guard r == 0 else { throw .floor("KVM_IRQFD", r) }
        }
        return DeliveryPath(
            name: Targets.Path.raw, floor: nil, vectors: vectors,
            signal: { bench_floor_signal(efds[$0]) },
            teardown: {
                for (fd, gsi) in zip(efds, gsis) {
                    _ = bench_floor_irqfd(vmfd, fd, gsi, 1)
                    bench_floor_close(fd)
                }
            })
    }

    /// The relay backend over KVM_SIGNAL_MSI.
    static func relay(_ guest: TinyVM, vectors: [UInt8]) throws(BenchError) -> DeliveryPath {
        let relay: RelayIrqFd
        do throws(IrqFdError) { relay = try RelayIrqFd(vm: guest.vm) } catch {
            throw .library("relay partition", error)
        }
        var routes = try Self.routes(vectors, "relay route") { () throws(IrqFdError) in try relay.newRoute() }
        let events = routes.map(\.event)
        return DeliveryPath(
            name: Targets.Path.relay, floor: Targets.Path.rawRelay, vectors: vectors,
            signal: { events[$0].signal() },
            teardown: {
                // Routes first, then the partition (its relay thread) with the closure.
                withExtendedLifetime(relay) { routes.removeAll() }
            })
    }

    /// The floor of `relay`: a C epoll thread that reads the eventfd and calls KVM_SIGNAL_MSI.
    static func rawRelay(_ guest: TinyVM, vectors: [UInt8]) throws(BenchError) -> DeliveryPath {
        var efds: [Int32] = []
        for _ in vectors {
            let fd = bench_floor_eventfd()
            guard fd >= 0 else { throw .floor("eventfd", fd) }
            efds.append(fd)
        }
        let messages = vectors.map { v in
            let m = message(v)
            return bench_floor_msi(gsi: 0, data: m.data, address: m.address)
        }
        guard let relay = bench_floor_relay_start(guest.vm.rawDescriptor, efds, messages, UInt32(efds.count)) else {
            throw .floor("pthread_create/epoll (C relay)", -Int32(errno))
        }
        return DeliveryPath(
            name: Targets.Path.rawRelay, floor: nil, vectors: vectors,
            signal: { bench_floor_signal(efds[$0]) },
            teardown: {
                bench_floor_relay_stop(relay)
                for fd in efds { bench_floor_close(fd) }
            })
    }

    /// The MSI-X emulator's userspace path: the device calls
    /// `signal(vector:)` and the emulator injects with KVM_SIGNAL_MSI on the
    /// device's thread. The table is programmed and the function enabled
    /// through the emulator's own register interface, as a guest would.
    static func userspace(_ guest: TinyVM, vectors: [UInt8]) throws(BenchError) -> DeliveryPath {
        guard let layout = MsixLayout(vectorCount: vectors.count) else {
            throw .setup("MSI-X layout of \(vectors.count) vectors")
        }
        let emulator = MsixEmulator(layout: layout, delivery: .userspace(KVMSignalMsiInjector(vm: guest.vm)))
        for (i, vector) in vectors.enumerated() {
            let m = message(vector)
            let base = UInt64(i * MsixLayout.entrySize)
            emulator.writeTable(offset: base, size: 4, value: UInt64(UInt32(truncatingIfNeeded: m.address)))
            emulator.writeTable(offset: base + 4, size: 4, value: m.address >> 32)
            emulator.writeTable(offset: base + 8, size: 4, value: UInt64(m.data))
            emulator.writeTable(offset: base + 12, size: 4, value: 0)
        }
        emulator.writeCapability(offset: 2, size: 2, value: 0x8000)
        guard (0..<vectors.count).allSatisfy({ emulator.isLive($0) }) else {
            throw .setup("MSI-X vectors did not go live")
        }
        return DeliveryPath(
            name: Targets.Path.userspace, floor: Targets.Path.rawSignalMsi, vectors: vectors,
            signal: { emulator.signal(vector: $0) },
            teardown: { emulator.reset() })
    }

    /// The floor of `userspace`: KVM_SIGNAL_MSI from C on the device thread.
    static func rawSignalMsi(_ guest: TinyVM, vectors: [UInt8]) -> DeliveryPath {
        let vmfd = guest.vm.rawDescriptor
        let messages = vectors.map(message)
        return DeliveryPath(
            name: Targets.Path.rawSignalMsi, floor: nil, vectors: vectors,
            signal: { _ = bench_floor_signal_msi(vmfd, messages[$0].address, messages[$0].data) },
            teardown: {})
    }
}
#endif
