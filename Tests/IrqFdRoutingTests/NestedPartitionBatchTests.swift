import IrqFdCore
import IrqFdRouting
import Testing

/// Batches open on many partitions at once: the caller's open batches are kept
/// inline for the first few partitions and in an overflow list past those
/// (`OpenBatches`); every partition must still find its own batch, at any depth.
@Suite struct NestedPartitionBatchTests {
    static let msi = MsiMessage(destination: 0, vector: 0x40)

    /// Opens a batch on each of `partitions[depth...]`, nested, sets one route
    /// in each, and checks that nothing was pushed while any batch was open.
    func nest(
        _ partitions: [RoutedIrqFd<RecordingKernel>], _ routes: [RoutedIrqFdRoute<RecordingKernel>],
        _ kernels: [RecordingKernel], depth: Int
    ) throws(IrqFdError) {
        guard depth < partitions.count else { return }
        try partitions[depth].withBatch { () throws(IrqFdError) in
            try routes[depth].setMsi(Self.msi)
            try nest(partitions, routes, kernels, depth: depth + 1)
            // Again, after the inner batches ended: still this partition's batch.
            try routes[depth].setMsi(MsiMessage(destination: 1, vector: 0x41))
            #expect(kernels[depth].calls.isEmpty, "partition \(depth): nothing pushed while its batch is open")
        }
        #expect(
            kernels[depth].calls == [.push([24: MsiMessage(destination: 1, vector: 0x41)]), .assign(24)],
            "partition \(depth): one push when its batch ends, then the arm")
    }

    @Test(arguments: [1, 4, 5, 9])
    func everyPartitionFindsItsOwnBatchAtAnyDepth(partitionCount: Int) throws {
        let kernels = (0..<partitionCount).map { _ in RecordingKernel() }
        let partitions = kernels.map { RoutedIrqFd(kernel: $0) }
        let routes = try partitions.map { try $0.newRoute() }
        try nest(partitions, routes, kernels, depth: 0)
        for route in routes { #expect(route.isArmed) }
    }

    @Test func aPartitionOutsideTheNestPushesAtOnce() throws {
        let kernels = (0..<6).map { _ in RecordingKernel() }
        let partitions = kernels.map { RoutedIrqFd(kernel: $0) }
        let routes = try partitions.map { try $0.newRoute() }
        // Batches open on partitions 0...4 (past the inline ones); partition 5 has none.
        func open(_ depth: Int) throws(IrqFdError) {
            if depth == 5 {
                try routes[5].setMsi(Self.msi)
                #expect(
                    kernels[5].calls == [.push([24: Self.msi]), .assign(24)], "no batch of its own: pushed at once")
                return
            }
            try partitions[depth].withBatch { () throws(IrqFdError) in try open(depth + 1) }
        }
        try open(0)
    }
}
