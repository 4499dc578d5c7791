#if os(Linux)
import Dispatch
import Foundation
import CReliability
import Glibc
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import Synchronization
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// A backend for the soak: a partition and its counters of what is free.
struct SoakBackend: Sendable, CustomTestStringConvertible {
    let name: String
    /// Operations when `IRQFD_SOAK_OPS` is not set: what fits CI's time.
    let defaultOperations: Int
    let make: @Sendable (CountingGuest) throws -> any IrqFd
    var testDescription: String { name }
    var operations: Int { environmentCount("IRQFD_SOAK_OPS", default: defaultOperations) }

    static let all: [SoakBackend] = [
        // Each KVM table push waits for an SRCU grace period (about 0.3 ms here):
        // a million operations take about 6 minutes, so CI runs 50,000.
        SoakBackend(name: "KVM irqfd", defaultOperations: 50_000) { guest in guest.vm.irqfd },
        // Relay operations are one epoll_ctl at most: the full million takes seconds.
        SoakBackend(name: "relay", defaultOperations: 1_000_000) { guest in try RelayIrqFd(vm: guest.vm.vm) },
    ]
}

/// What the process holds; the soak checks it returns to where it started.
struct Holdings: CustomStringConvertible {
    var descriptors: Int
    var threads: Int
    var freeGsis: Int
    var residentBytes: Int
    /// Bytes malloc has handed out and not had back (mallinfo2: arena + mmapped).
    var heapBytes: Int

    static func now(_ irqfd: KVMIrqFd) -> Holdings {
        Holdings(
            descriptors: openDescriptorCount(), threads: threadCount(), freeGsis: irqfd.freeGsiCount,
            residentBytes: residentSetBytes(), heapBytes: reliability_heap_in_use())
    }

    var description: String {
        "\(descriptors) descriptors, \(threads) threads, \(freeGsis) free GSIs, RSS \(residentBytes / 1024) KiB, heap \(heapBytes / 1024) KiB"
    }
}

/// The leak soak: `IRQFD_SOAK_OPS` route operations per backend (default:
/// 1,000,000 for the relay, 50,000 for KVM, whose table pushes are slow; the
/// full KVM million is `IRQFD_SOAK_OPS=1000000 swift test --filter LeakSoakTests`) from four threads sharing 64 route
/// slots, so that routes are created on one thread, used on others and
/// dropped wherever their last reference goes: create, setMsi (new and
/// unchanged), mask, unmask, clearMsi, signal, drop, and batches of setMsi.
/// Afterwards, with every route dropped, descriptors, threads and free GSIs
/// are exactly where they started, and resident memory and the malloc heap
/// within a small tolerance (see `rssTolerance`).
@Suite(needsKVM, .serialized, inOwnProcess(OwnProcess.leakSoak)) struct LeakSoakTests {
    static let threads = 4
    static let slots = 64
    /// RSS may grow a little without a leak: glibc keeps freed memory in each
    /// thread's arena, and the first operations fault in code and data pages.
    /// Both are bounded; a leak grows with the operation count (4 bytes per
    /// operation is 4 MB at a million). Measured after a warm-up of 5%.
    static let rssTolerance = 2 << 20
    /// The heap must come back to within this of where it started: any
    /// per-operation leak of a route (hundreds of bytes) shows at once.
    static let heapTolerance = 256 << 10

    @Test(arguments: SoakBackend.all)
    func aMillionRouteOperationsLeaveNothingBehind(_ backend: SoakBackend) throws {
        let guest = try CountingGuest()
        let seed = announcedSeed("IRQFD_SOAK_SEED", for: "leak soak (\(backend.name))")
        var partition: (any IrqFd)? = try backend.make(guest)
        let operations = backend.operations
        let warmUp = max(1_000, operations / 20)
        // Warm up: fault in code, grow the routing buffers and arenas once.
        var failures = Self.soak(partition!, operations: warmUp, seed: seed ^ 0xA5A5)
        _ = settledDescriptorCount()
        let before = Holdings.now(guest.vm.irqfd)
        let start = ContinuousClock.now
        failures += Self.soak(partition!, operations: operations, seed: seed)
        let elapsed = ContinuousClock.now - start
        // The relay thread may still hold the last dropped route's event for
        // the report it is handling: let it finish.
        _ = settledDescriptorCount()
        let after = Holdings.now(guest.vm.irqfd)
        #expect(failures.isEmpty, "operations failed: \(failures.prefix(5))")
        let rate =
            Double(operations) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        print(
            "leak soak (\(backend.name)): \(operations) operations on \(Self.threads) threads in \(elapsed) (\(Int(rate)) per second)"
        )
        print("  before: \(before)")
        print("  after:  \(after)")
        #expect(after.descriptors == before.descriptors, "every event closed")
        // Dispatch's worker pool may shrink meanwhile; it must not grow.
        #expect(after.threads <= before.threads, "no thread left behind")
        #expect(after.freeGsis == before.freeGsis, "every GSI free again")
        if !underSanitizer {
            #expect(after.residentBytes - before.residentBytes <= Self.rssTolerance, "resident memory came back")
            #expect(after.heapBytes - before.heapBytes <= Self.heapTolerance, "the heap came back")
        }
        #expect(guest.vm.irqfd.pushedEntries.isEmpty, "the kernel's table is empty again")
        // Dropping the partition itself (the relay's thread and epoll) leaves nothing either.
        let descriptorsWithPartition = settledDescriptorCount()
        let relayThreadsWithPartition = threadCount(named: EpollPoller.threadName)
        partition = nil
        if backend.name == "relay" {
            #expect(
                settledDescriptorCount() == descriptorsWithPartition - 2, "the relay's epoll and wake eventfd closed")
            #expect(relayThreadsWithPartition == 1, "the relay has one thread")
            #expect(threadCount(named: EpollPoller.threadName) == 0, "the relay thread was joined")
        }
        #expect(!guest.vm.hasEnded, "the guest survived the soak")
    }

    /// `operations` random route operations from `threads` threads over shared
    /// slots; every route is dropped at the end. Returns the errors seen.
    static func soak(_ irqfd: any IrqFd, operations: Int, seed: UInt64) -> [IrqFdError] {
        let slots = Mutex<[(any IrqFdRoute)?]>(Array(repeating: nil, count: Self.slots))
        let failures = Mutex<[IrqFdError]>([])
        let perThread = operations / threads
        DispatchQueue.concurrentPerform(iterations: threads) { index in
            var random = SplitMix64(seed: seed &+ UInt64(index) &* 0x9E37_79B9)
            for _ in 0..<perThread {
                let slot = Int.random(in: 0..<Self.slots, using: &random)
                let choice = Int.random(in: 0..<100, using: &random)
                let msi = MsiMessage(
                    destination: UInt32.random(in: 0...1, using: &random),
                    vector: UInt8.random(in: 0x30...0x3F, using: &random))
                do throws(IrqFdError) {
                    switch choice {
                    case 0..<12:
                        // Drop, outside the slots' lock (the last reference may be another thread's).
                        _ = slots.withLock { s in s[slot].take() }
                    case 12..<25:
                        let route = try irqfd.newIrqFdRoute()
                        _ = slots.withLock { s in s[slot].take() }
                        slots.withLock { $0[slot] = route }
                    default:
                        guard let route = slots.withLock({ $0[slot] }) else {
                            let route = try irqfd.newIrqFdRoute()
                            slots.withLock { $0[slot] = route }
                            continue
                        }
                        switch choice {
                        case 25..<45: try route.setMsi(msi)
                        case 45..<60: try route.mask()
                        case 60..<75: try route.unmask()
                        case 75..<83: try route.clearMsi()
                        case 83..<93: route.event.signal()
                        case 93..<97: _ = route.consumePending()
                        default:
                            // A batch retargeting a few routes: one push for all.
                            let batch = slots.withLock { s in
                                (0..<4).compactMap { _ in s[Int.random(in: 0..<Self.slots, using: &random)] }
                            }
                            try irqfd.withBatch { () throws(IrqFdError) in
                                for route in batch { try route.setMsi(msi) }
                            }
                        }
                    }
                } catch {
                    failures.withLock { $0.append(error) }
                }
            }
        }
        slots.withLock { $0 = Array(repeating: nil, count: Self.slots) }
        return failures.withLock { $0 }
    }
}
#endif
