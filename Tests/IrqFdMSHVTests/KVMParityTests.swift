#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdMSHV
import IrqFdRouting
import KVM
import KVMFaultInjection
import TestSupport
import Testing

/// One route operation of a script, on a slot that holds a route or nothing.
indirect enum RouteOp: CustomStringConvertible {
    case create(Int)
    case drop(Int)
    case setMsi(Int, MsiMessage)
    case clearMsi(Int)
    case mask(Int)
    case unmask(Int)
    case consumePending(Int)
    /// The next call of this kind fails (KVM: `vm.faults`; mshv: the recording partition).
    case failNext(Fault)
    case batch([RouteOp])

    enum Fault: String { case irqfd, routing }

    var description: String {
        switch self {
        case .create(let s): "create[\(s)]"
        case .drop(let s): "drop[\(s)]"
        case .setMsi(let s, let m): "setMsi[\(s)](0x\(String(m.address, radix: 16)), 0x\(String(m.data, radix: 16)))"
        case .clearMsi(let s): "clearMsi[\(s)]"
        case .mask(let s): "mask[\(s)]"
        case .unmask(let s): "unmask[\(s)]"
        case .consumePending(let s): "consumePending[\(s)]"
        case .failNext(let f): "failNext(\(f))"
        case .batch(let ops): "batch{\(ops.map(\.description).joined(separator: "; "))}"
        }
    }
}

/// What one operation did: its outcome (errors with the backend's call name
/// mapped to a common one) and what the kernel saw meanwhile.
struct Step<Observed: Equatable>: Equatable, CustomStringConvertible {
    var op: String
    var outcome: String
    var observed: Observed
    var description: String { "\(op) -> \(outcome): \(observed)" }
}

/// Ioctl counts of one step, as `vm.counters` tells them for KVM.
struct Counts: Equatable, CustomStringConvertible {
    var pushes = 0, assigns = 0, deassigns = 0
    var description: String { "pushes \(pushes), assigns \(assigns), deassigns \(deassigns)" }
    init(pushes: Int = 0, assigns: Int = 0, deassigns: Int = 0) {
        self.pushes = pushes
        self.assigns = assigns
        self.deassigns = deassigns
    }
    init(_ calls: some Sequence<KernelCall>) {
        for call in calls {
            switch call {
            case .push: pushes += 1
            case .assign: assigns += 1
            case .deassign: deassigns += 1
            }
        }
    }
}

/// Runs `script` on `partition`, observing the kernel around each top-level operation.
func run<K: RoutingKernel, Mark, Observed: Equatable>(
    _ script: [RouteOp], on partition: RoutedIrqFd<K>, slots count: Int,
    inject: (RouteOp.Fault) -> Void, mark: () -> Mark, diff: (Mark, Mark) -> Observed
) -> [Step<Observed>] {
    var slots = [RoutedIrqFdRoute<K>?](repeating: nil, count: count)
    var steps: [Step<Observed>] = []
    for op in script {
        let before = mark()
        let outcome = perform(op, on: partition, slots: &slots, inject: inject)
        steps.append(Step(op: op.description, outcome: outcome, observed: diff(before, mark())))
    }
    slots.removeAll()
    return steps
}

func perform<K: RoutingKernel>(
    _ op: RouteOp, on partition: RoutedIrqFd<K>, slots: inout [RoutedIrqFdRoute<K>?], inject: (RouteOp.Fault) -> Void
) -> String {
    func attempt(_ body: () throws(IrqFdError) -> Void) -> String {
        do throws(IrqFdError) {
            try body()
            return "ok"
        } catch {
            return normalized(error)
        }
    }
    switch op {
    case .create(let s):
        guard slots[s] == nil else { return "occupied" }
        return attempt { () throws(IrqFdError) in slots[s] = try partition.newRoute() }
    case .drop(let s):
        slots[s] = nil
        return "ok"
    case .setMsi(let s, let m):
        guard let route = slots[s] else { return "empty" }
        return attempt { () throws(IrqFdError) in try route.setMsi(m) }
    case .clearMsi(let s):
        guard let route = slots[s] else { return "empty" }
        return attempt { () throws(IrqFdError) in try route.clearMsi() }
    case .mask(let s):
        guard let route = slots[s] else { return "empty" }
        return attempt { () throws(IrqFdError) in try route.mask() }
    case .unmask(let s):
        guard let route = slots[s] else { return "empty" }
        return attempt { () throws(IrqFdError) in try route.unmask() }
    case .consumePending(let s):
        guard let route = slots[s] else { return "empty" }
        return route.consumePending() ? "pending" : "none"
    case .failNext(let fault):
        inject(fault)
        return "ok"
    case .batch(let ops):
        var inner: [String] = []
        let end = attempt { () throws(IrqFdError) in
            try partition.withBatch { () throws(IrqFdError) in
                for op in ops { inner.append(perform(op, on: partition, slots: &slots, inject: inject)) }
            }
        }
        return "[\(inner.joined(separator: ", "))] \(end)"
    }
}

/// The error with each backend's request name replaced by what it does.
func normalized(_ error: IrqFdError) -> String {
    guard case .systemCall(let failure) = error else { return "\(error)" }
    let call =
        switch failure.call {
        case "KVM_IRQFD", "MSHV_IRQFD": "irqfd"
        case "KVM_SET_GSI_ROUTING", "MSHV_SET_MSI_ROUTING": "routing"
        default: failure.call
        }
    return "\(call) failed: \(failure.errno)"
}

/// A readable script that uses every route operation, including failures.
let everyOperationScript: [RouteOp] = {
    let a = MsiMessage(destination: 0, vector: 0x40)
    let b = MsiMessage(destination: 1, vector: 0x41)
    let c = MsiMessage(destination: 1, vector: 0x42, deliveryMode: .lowestPriority, destinationMode: .logical)
    return [
        .create(0), .create(1), .create(2),
        .setMsi(0, a), .setMsi(0, a), .setMsi(0, b),
        .mask(0), .mask(0), .setMsi(0, a), .consumePending(0), .unmask(0), .unmask(0),
        .clearMsi(0), .clearMsi(0), .unmask(0), .setMsi(0, c),
        .mask(1), .setMsi(1, b), .unmask(1),
        .setMsi(2, MsiMessage(address: 0xFED0_0000, data: 0x40)),
        .batch([.setMsi(2, a), .setMsi(1, c), .mask(0), .create(3), .setMsi(3, b), .clearMsi(1)]),
        .batch([.batch([.setMsi(1, a)]), .drop(3), .unmask(0)]),
        .failNext(.irqfd), .mask(2),
        .failNext(.routing), .setMsi(2, b),
        .failNext(.irqfd), .setMsi(1, b), .clearMsi(1), .setMsi(1, b),
        .failNext(.routing), .batch([.setMsi(0, b), .create(3), .setMsi(3, a)]),
        .drop(0), .drop(1), .create(0), .setMsi(0, a), .drop(2), .drop(3), .drop(0),
    ]
}()

/// A seeded random script (SplitMix64), so a failure names a seed that replays it.
func randomScript(seed: UInt64, length: Int, slots: Int) -> [RouteOp] {
    var generator = SplitMix64(seed: seed)
    func next(_ bound: Int) -> Int { Int(generator.next() % UInt64(bound)) }
    let messages =
        (0..<4).map { MsiMessage(destination: UInt32($0 % 2), vector: UInt8(0x40 + $0)) }
        + [MsiMessage(address: 0xFED0_0000, data: 0x40)]
    func single() -> RouteOp {
        let s = next(slots)
        switch next(100) {
        case 0..<14: return .create(s)
        case 14..<22: return .drop(s)
        case 22..<50: return .setMsi(s, messages[next(messages.count)])
        case 50..<60: return .clearMsi(s)
        case 60..<75: return .mask(s)
        case 75..<90: return .unmask(s)
        case 90..<95: return .consumePending(s)
        default: return .failNext(next(2) == 0 ? .irqfd : .routing)
        }
    }
    return (0..<length).map { _ in
        next(10) == 0 ? .batch((0..<(1 + next(8))).map { _ in single() }) : single()
    }
}

/// The mshv backend makes the same arm/disarm/push calls as the KVM backend,
/// operation by operation, for the same route operations: KVM's calls are
/// taken from a real KVM VM (its counters, and a recorder in front of the
/// real KVMRoutingKernel); mshv's from the bytes its ioctls carried.
@Suite(needsKVM, .serialized) struct KVMParityTests {
    static func makeVM() throws -> VirtualMachine {
        let vm = try KVMSystem().createVM()
        try vm.createIrqchip()
        return vm
    }

    /// mshv's steps: calls decoded from the recording partition's ioctl bytes.
    static func mshvSteps(_ script: [RouteOp], slots: Int = 6) -> (
        steps: [Step<[KernelCall]>], device: RecordingPartition
    ) {
        let device = RecordingPartition()
        let irqfd = MSHVIrqFd(partition: device)
        let steps = run(
            script, on: irqfd, slots: slots,
            inject: { device.failNext($0 == .irqfd ? MSHV.irqfd : MSHV.setMsiRouting) },
            mark: { device.calls.count }, diff: { Array(device.calls[$0..<$1]) })
        return (steps, device)
    }

    /// KVM's steps: the real KVM routing kernel behind a recorder, on a real VM.
    static func kvmSteps(_ script: [RouteOp], vm: VirtualMachine, slots: Int = 6) throws -> (
        steps: [Step<[KernelCall]>], partition: RoutedIrqFd<ForwardingRecorder<KVMRoutingKernel>>
    ) {
        let recorder = ForwardingRecorder(try KVMRoutingKernel(vm: vm))
        let irqfd = RoutedIrqFd(kernel: recorder)
        let steps = run(
            script, on: irqfd, slots: slots,
            inject: { vm.faults.failCall($0 == .irqfd ? "KVM_IRQFD" : "KVM_SET_GSI_ROUTING") },
            mark: { recorder.calls.count }, diff: { Array(recorder.calls[$0..<$1]) })
        vm.faults.clear()
        return (steps, irqfd)
    }

    static func expectSameSteps<O>(
        _ kvm: [Step<O>], _ mshv: [Step<O>], seed: UInt64? = nil, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(kvm.count == mshv.count, sourceLocation: sourceLocation)
        for (index, (k, m)) in zip(kvm, mshv).enumerated() where k != m {
            Issue.record(
                "step \(index)\(seed.map { " (seed \($0))" } ?? ""): KVM \(k) but mshv \(m)",
                sourceLocation: sourceLocation)
            return
        }
    }

    @Test func everyOperationMakesTheSameCallsAsOnKVM() throws {
        let vm = try Self.makeVM()
        let kvm = try Self.kvmSteps(everyOperationScript, vm: vm)
        let mshv = Self.mshvSteps(everyOperationScript)
        Self.expectSameSteps(kvm.steps, mshv.steps)
        // The script did exercise every kind of call, and failures.
        let all = kvm.steps.flatMap(\.observed)
        #expect(all.contains { if case .push = $0 { true } else { false } })
        #expect(all.contains { if case .assign = $0 { true } else { false } })
        #expect(all.contains { if case .deassign = $0 { true } else { false } })
        #expect(
            kvm.steps.contains { $0.outcome.contains("irqfd failed") }
                && kvm.steps.contains { $0.outcome.contains("routing failed") })
        #expect(kvm.steps.contains { $0.outcome.contains("not deliverable") })
        // Both end with the table the last push carried and nothing armed.
        #expect(mshv.device.table.isEmpty && mshv.device.armed.isEmpty && kvm.partition.pushedEntries.isEmpty)
    }

    /// The same comparison against the unmodified `KVMIrqFd`, with KVM's calls
    /// counted by the VM itself (`vm.counters`).
    @Test func everyOperationMakesTheSameNumberOfIoctlsAsKVMIrqFd() throws {
        let vm = try Self.makeVM()
        let irqfd = try KVMIrqFd(vm: vm)
        let kvm = run(
            everyOperationScript, on: irqfd, slots: 6,
            inject: { vm.faults.failCall($0 == .irqfd ? "KVM_IRQFD" : "KVM_SET_GSI_ROUTING") },
            mark: { vm.counters.snapshot },
            diff: { before, after in
                let d = after - before
                return Counts(pushes: d.routingPushes, assigns: d.irqfdAssigns, deassigns: d.irqfdDeassigns)
            })
        vm.faults.clear()
        // vm.counters counts attempts, the ones failed on purpose included; so
        // does the recording partition's `attempts`.
        let device = RecordingPartition()
        let mshv = run(
            everyOperationScript, on: MSHVIrqFd(partition: device), slots: 6,
            inject: { device.failNext($0 == .irqfd ? MSHV.irqfd : MSHV.setMsiRouting) },
            mark: { device.attempts.count }, diff: { Counts(device.attempts[$0..<$1]) })
        Self.expectSameSteps(kvm, mshv)
        #expect(kvm.map(\.observed.pushes).reduce(0, +) > 5)
    }

    @Test(arguments: [UInt64(1), 2, 3, 0xC0FFEE])
    func randomScriptsMakeTheSameCallsAsOnKVM(seed: UInt64) throws {
        let script = randomScript(seed: seed, length: 300, slots: 6)
        let vm = try Self.makeVM()
        let kvm = try Self.kvmSteps(script, vm: vm)
        let mshv = Self.mshvSteps(script)
        Self.expectSameSteps(kvm.steps, mshv.steps, seed: seed)
        #expect(
            kvm.partition.pushedEntries
                == mshv.device.table.map { RoutingEntry(gsi: $0.key, msi: $0.value) }.sorted { $0.gsi < $1.gsi })
    }
}
#endif
