import IrqFdCore
import IrqFdRouting
import TestSupport
import Testing

/// Random route operations on a coalescing partition, with calls failing at
/// random: after every operation every route keeps the invariant (live for
/// its owner: armed or served, never both; otherwise neither), each route's
/// entry is what its last successful call made it (a failed single-route
/// call changes nothing), and once the failures stop every route that is
/// live for its owner ends armed with its entry in the kernel.
@Suite struct RoutingModelTests {
    @Test(arguments: [1, 2, 3, 4, 5, 6] as [UInt64])
    func randomOperationsWithRandomFailuresKeepTheInvariant(seed: UInt64) throws {
        let rig = CoalescingRig(threshold: 3, kernel: RecordingKernel(gsiLimit: 40, reserved: 0..<24))
        var rng = SplitMix64(seed: seed)
        var routes: [RoutedIrqFdRoute<RecordingKernel>?] = Array(repeating: nil, count: 8)
        let calls = ["push", "assign", "deassign"]
        var refused: UInt32?
        for step in 0..<4000 {
            let i = Int.random(in: 0..<routes.count, using: &rng)
            if Int.random(in: 0..<5, using: &rng) == 0 { rig.kernel.failNext(calls.randomElement(using: &rng)!) }
            if Int.random(in: 0..<200, using: &rng) == 0 {
                if let gsi = refused {
                    rig.kernel.allowAssign(gsi)
                    refused = nil
                } else if let gsi = routes[i]?.gsi {
                    rig.kernel.refuseAssign(gsi)
                    refused = gsi
                }
            }
            let message = MsiMessage(
                destination: UInt32.random(in: 0..<2, using: &rng), vector: UInt8.random(in: 0x30...0x33, using: &rng))
            let op = Int.random(in: 0..<11, using: &rng)
            let before = routes[i]?.msi
            var expected: MsiMessage??
            do throws(IrqFdError) {
                switch op {
                case 0: if routes[i] == nil { routes[i] = try rig.partition.newRoute() }
                case 1:
                    expected = .some(message)
                    try routes[i]?.setMsi(message)
                case 2:
                    expected = .some(message)
                    try routes[i]?.setMsiDeferred(message)
                case 3:
                    expected = .some(nil)
                    try routes[i]?.clearMsi()
                case 4: try routes[i]?.mask()
                case 5: try routes[i]?.unmask()
                case 6: rig.partition.commitNow()
                case 7: rig.timer.runHeld()
                case 8: routes[i] = nil
                case 9:
                    let chosen = routes.indices.filter { _ in Bool.random(using: &rng) }
                    try rig.partition.withBatch { () throws(IrqFdError) in
                        for j in chosen {
                            try routes[j]?.setMsi(message)
                            if j % 3 == 0 { try routes[j]?.mask() } else if j % 3 == 1 { try routes[j]?.unmask() }
                        }
                    }
                default:
                    expected = .some(nil)
                    try routes[i]?.setMsi(address: 0xFED0_0000, data: 0x40)
                }
                if let expected, let route = routes[i] {
                    #expect(route.msi == expected, "step \(step), op \(op): the entry the call set")
                }
            } catch {
                if case .undeliverableAddress = error {
                    #expect(routes[i]?.msi == nil, "step \(step): an undeliverable address leaves no entry")
                } else if expected != nil, let route = routes[i] {
                    #expect(route.msi == before, "step \(step), op \(op): a failed call changes no entry (\(error))")
                }
            }
            let violations = rig.partition.invariantViolations()
            if !violations.isEmpty {
                Issue.record("seed \(seed), step \(step), op \(op): \(violations)")
                return
            }
        }
        // The failures stop: the retries and commits bring every route in line.
        rig.kernel.failNext("none")
        if let refused { rig.kernel.allowAssign(refused) }
        for _ in 0..<4 {
            rig.partition.commitNow()
            rig.timer.runHeld()
        }
        rig.expectInvariant("settled")
        for route in routes.compactMap(\.self) where route.msi != nil && !route.isMasked {
            #expect(route.isArmed && !route.isServed, "GSI \(route.gsi) ends armed")
            #expect(rig.kernel.table[route.gsi] == route.msi && rig.kernel.armed.contains(route.gsi))
        }
    }
}
