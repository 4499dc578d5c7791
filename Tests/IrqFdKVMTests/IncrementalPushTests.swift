#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdRouting
import KVM
import KVMFaultInjection
import KVMTestSupport
import TestSupport
import Testing

/// A push costs O(changed entries) of Swift work. The KVM
/// kernel keeps the encoded kvm_irq_routing between pushes and rewrites only
/// what changed; a refused push leaves it exactly as the kernel holds it.
@Suite struct IncrementalGSIRoutingTableTests {
    /// The model: GSI -> (address, data).
    typealias Model = [UInt32: (UInt64, UInt32)]

    static func entries(_ t: borrowing IncrementalGSIRoutingTable) -> [UInt32: UInt64] {
        var result: [UInt32: UInt64] = [:]
        for e in t.msiEntries { result[e.gsi] = e.address << 32 | UInt64(e.data) }
        return result
    }

    @Test func setReplaceAndRemoveBySwapMatchAModelAndRollBackByteForByte() {
        var table = IncrementalGSIRoutingTable(capacity: 256, gsiLimit: 256, irqchipRoutes: true)
        var model: [UInt32: UInt64] = [:]
        var rng = SystemRandomNumberGenerator()
        for round in 0..<200 {
            let before = table.table.bytes
            let beforeModel = model
            var next = model
            for _ in 0..<Int.random(in: 1...20, using: &rng) {
                let gsi = UInt32.random(in: 24..<200, using: &rng)
                if Bool.random(using: &rng) {
                    let data = UInt32.random(in: 0...0xFF, using: &rng)
                    table.setMsi(gsi: gsi, address: 0xFEE0_0000, data: data)
                    next[gsi] = 0xFEE0_0000 << 32 | UInt64(data)
                } else {
                    table.removeMsi(gsi: gsi)
                    next[gsi] = nil
                }
            }
            #expect(Self.entries(table) == next)
            #expect(table.msiCount == next.count && table.table.count == table.fixedCount + next.count)
            if round % 3 == 0 {
                table.rollback()
                #expect(table.table.bytes == before, "rollback restores every byte, slot order included")
                #expect(Self.entries(table) == beforeModel)
            } else {
                table.commit()
                model = next
            }
        }
        // The irqchip routes never moved.
        var fresh = GSIRoutingTable(capacity: 64)
        fresh.appendDefaultIrqchipRoutes()
        let fixed = GSIRoutingTable.headerSize..<(GSIRoutingTable.headerSize + fresh.count * GSIRoutingTable.entrySize)
        #expect(Array(table.table.bytes[fixed]) == Array(fresh.bytes[fixed]))
    }

    @Test func aChangeWritesOneEntryWhateverTheTableSize() {
        var table = IncrementalGSIRoutingTable(capacity: 4096, gsiLimit: 4096, irqchipRoutes: true)
        table.replaceAll((24..<2072).map { (UInt32($0), UInt64(0xFEE0_0000), UInt32(0x30)) })
        table.commit()
        let written = table.entriesWritten
        table.setMsi(gsi: 100, address: 0xFEE0_0000, data: 0x31)
        #expect(table.entriesWritten - written == 1)
        table.removeMsi(gsi: 101)
        #expect(table.entriesWritten - written == 2, "a removal moves the last entry into the hole: one entry")
        #expect(table.msi(gsi: 2071)?.data == 0x30 && table.msi(gsi: 101) == nil && table.msiCount == 2047)
    }
}

@Suite(needsKVM) struct IncrementalPushKVMTests {
    /// `count` routes made live in one batch (one push), route i to vCPU 0 with `vector(i)`.
    static func liveRoutes(_ irqfd: KVMIrqFd, count: Int, vector: (Int) -> UInt8) throws -> [KVMIrqFdRoute] {
        var routes: [KVMIrqFdRoute] = []
        try irqfd.withBatch { () throws(IrqFdError) in
            for i in 0..<count {
                let route = try irqfd.newRoute()
                try route.setMsi(MsiMessage(destination: 0, vector: vector(i)))
                routes.append(route)
            }
        }
        return routes
    }

    @Test func aPushAfterOneChangeEncodesOneEntryOfTwoThousand() throws {
        let guest = try CountingGuest(cpus: 1)
        let irqfd = guest.irqfd
        let routes = try Self.liveRoutes(irqfd, count: 2048) { i in UInt8(0x30 + i % 0x40) }
        let kernel = irqfd.kernel
        var written = kernel.entriesEncoded
        let pushes = irqfd.pushCount
        try routes[7].setMsi(MsiMessage(destination: 0, vector: 0x77))
        #expect(irqfd.pushCount == pushes + 1)
        #expect(kernel.entriesEncoded - written == 1, "one changed entry, one entry encoded")
        written = kernel.entriesEncoded
        try routes[9].clearMsi()
        #expect(kernel.entriesEncoded - written <= 1, "a removal moves at most one entry")
        let expected = Dictionary(uniqueKeysWithValues: irqfd.pushedEntries.map { ($0.gsi, $0.msi) })
        #expect(kernel.kernelMsiEntries == expected && expected.count == 2047)
        // The kernel really holds the new entry: the route delivers its new vector.
        routes[7].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x77, count: 1))
        guest.expectAlive()
    }

    @Test func aRefusedIncrementalPushRestoresTheKernelTableExactlyAndRoutesKeepDelivering() throws {
        let guest = try CountingGuest(cpus: 1)
        let irqfd = guest.irqfd
        var routes = try Self.liveRoutes(irqfd, count: 64) { i in UInt8(0x40 + i % 8) }
        let kernel = irqfd.kernel
        let before = kernel.kernelTableBytes
        let beforeEntries = irqfd.pushedEntries
        guest.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", errno: .ioError)
        var added: KVMIrqFdRoute?
        #expect(throws: IrqFdError.self) {
            try irqfd.withBatch { () throws(IrqFdError) in
                try routes[0].setMsi(MsiMessage(destination: 0, vector: 0x50))  // replace
                try routes[1].clearMsi()  // remove by swap
                routes.remove(at: 2)  // drop
                added = try irqfd.newRoute()
                try added!.setMsi(MsiMessage(destination: 0, vector: 0x51))  // append
            }
        }
        guest.vm.vm.faults.clear()
        #expect(kernel.kernelTableBytes == before, "the kept table is byte for byte what the kernel holds")
        // Everything but the dropped route is where it was; the failed batch's routes came back.
        #expect(Set(irqfd.pushedEntries) == Set(beforeEntries))
        routes[0].event.signal()
        routes[1].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x40, count: 1), "route 0 delivers its old vector")
        #expect(guest.waitFor(cpu: 0, vector: 0x41, count: 1), "route 1 still delivers")
        guest.settle()
        #expect(guest.count(cpu: 0, vector: 0x50) == 0)
        // The next push carries what waited, and only that.
        try routes[0].setMsi(MsiMessage(destination: 0, vector: 0x52))
        let expected = Dictionary(uniqueKeysWithValues: irqfd.pushedEntries.map { ($0.gsi, $0.msi) })
        #expect(kernel.kernelMsiEntries == expected)
        routes[0].event.signal()
        #expect(guest.waitFor(cpu: 0, vector: 0x52, count: 1))
        _ = added
        guest.expectAlive()
    }
}
#endif
