#if os(Linux)
import Foundation
import IrqFdCore
import MSIX
import SystemPackage
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// An MSI-X function as a guest driver programs it, over a backend's partition.
struct Function {
    let emulator: MsixEmulator
    static let vectors = 4

    init(_ target: any FaultTarget) {
        emulator = MsixEmulator(layout: MsixLayout(vectorCount: Self.vectors)!, delivery: .irqfd(target.partition))
    }

    /// The message vector `v` is programmed with: alternating vCPUs, vector 0x60 + v (+ 0x10 once retargeted).
    static func message(_ v: Int, retargeted: Bool = false) -> MsiMessage {
        MsiMessage(
            destination: UInt32((v + (retargeted ? 1 : 0)) % 2), vector: UInt8(0x60 + v + (retargeted ? 0x10 : 0)))
    }

    func program(_ v: Int, _ message: MsiMessage) { emulator.program(v, message) }
    func setMasked(_ v: Int, _ masked: Bool) { emulator.setMasked(v, masked) }
    func control(enabled: Bool, functionMasked: Bool) {
        emulator.control(enabled: enabled, functionMasked: functionMasked)
    }
    /// The message the table holds for `v`.
    func message(_ v: Int) -> MsiMessage { emulator.entry(v).message }
    /// The vectors' routes made so far.
    var routes: [any InspectableRoute] { (0..<Self.vectors).compactMap { emulator.route($0) as? any InspectableRoute } }
}

/// One emulator operation under attack (a guest write that makes route calls).
struct EmulatorScenario: Sendable, CustomTestStringConvertible {
    let name: String
    /// Brings a fresh function into the state before the operation; may hand
    /// the operation a saved state.
    let prepare: @Sendable (Function) -> MsixSavedState?
    let operation: @Sendable (Function, MsixSavedState?) -> Void
    /// Whether every failed call reaches `lastRouteError`. Dropping a route
    /// (reset) cannot report its disarm: only the batch's push can fail loudly.
    var reportsEveryCall = true
    var testDescription: String { name }

    static func programAll(_ f: Function, masked: Bool) {
        for v in 0..<Function.vectors {
            f.program(v, Function.message(v))
            f.setMasked(v, masked)
        }
    }

    static let all: [EmulatorScenario] = [
        EmulatorScenario(
            name: "enable MSI-X with every vector unmasked (one batch)",
            prepare: { f in
                programAll(f, masked: false)
                return nil
            }, operation: { f, _ in f.control(enabled: true, functionMasked: false) }),
        EmulatorScenario(
            name: "unmask an entry for the first time (route made)",
            prepare: { f in
                programAll(f, masked: true)
                f.control(enabled: true, functionMasked: false)
                return nil
            }, operation: { f, _ in f.setMasked(1, false) }),
        EmulatorScenario(
            name: "mask a live entry",
            prepare: { f in
                programAll(f, masked: false)
                f.control(enabled: true, functionMasked: false)
                return nil
            }, operation: { f, _ in f.setMasked(2, true) }),
        EmulatorScenario(
            name: "unmask an entry that has a route",
            prepare: { f in
                programAll(f, masked: false)
                f.control(enabled: true, functionMasked: false)
                f.setMasked(3, true)
                return nil
            }, operation: { f, _ in f.setMasked(3, false) }),
        EmulatorScenario(
            name: "retarget a live entry (new data)",
            prepare: { f in
                programAll(f, masked: false)
                f.control(enabled: true, functionMasked: false)
                return nil
            }, operation: { f, _ in f.program(0, Function.message(0, retargeted: true)) }),
        EmulatorScenario(
            name: "function mask",
            prepare: { f in
                programAll(f, masked: false)
                f.control(enabled: true, functionMasked: false)
                return nil
            }, operation: { f, _ in f.control(enabled: true, functionMasked: true) }),
        EmulatorScenario(
            name: "function unmask",
            prepare: { f in
                programAll(f, masked: false)
                f.control(enabled: true, functionMasked: false)
                f.control(enabled: true, functionMasked: true)
                return nil
            }, operation: { f, _ in f.control(enabled: true, functionMasked: false) }),
        EmulatorScenario(
            name: "disable MSI-X",
            prepare: { f in
                programAll(f, masked: false)
                f.control(enabled: true, functionMasked: false)
                return nil
            }, operation: { f, _ in f.control(enabled: false, functionMasked: false) }),
        // Routes are kept (masked and cleared), so every failed call is reported;
        // a route whose mask fails is released instead.
        EmulatorScenario(
            name: "reset a live function (routes masked and cleared in one batch)",
            prepare: { f in
                programAll(f, masked: false)
                f.control(enabled: true, functionMasked: false)
                return nil
            }, operation: { f, _ in f.emulator.reset() }),
        EmulatorScenario(
            name: "restore a live state",
            prepare: { f in
                programAll(f, masked: false)
                f.control(enabled: true, functionMasked: false)
                let saved = f.emulator.save()
                f.control(enabled: false, functionMasked: false)
                for v in 0..<Function.vectors { f.setMasked(v, true) }
                return saved
            },
            operation: { f, saved in
                if let saved { try? f.emulator.restore(saved) }
            }),
    ]
}

/// Every MSI-X emulator operation that makes route calls, over every
/// backend, failed at each of those calls in turn. A guest write never
/// throws, so the emulator must report the error (`lastRouteError`, naming
/// the call) and keep the promise that makes MSI-X lossless: a vector the
/// emulator calls live delivers, and any other vector latches its signal and
/// shows it in the PBA. The same write, repeated with nothing failing, then
/// succeeds, and every vector behaves as the table says.
@Suite(needsKVM, .serialized) struct EmulatorFaultTests {
    @Test(arguments: EmulatorScenario.all, FaultBackend.allCases)
    func emulatorOperationFailedAtEachCall(_ scenario: EmulatorScenario, on backend: FaultBackend) throws {
        let guest = try CountingGuest()
        try attack(scenario, on: backend.target(guest), guest: guest)
    }

    func attack(_ scenario: EmulatorScenario, on target: any FaultTarget, guest: CountingGuest) throws {
        let freeBefore = target.freeGsis
        let calls: [String: Int]
        do {
            let f = Function(target)
            let saved = scenario.prepare(f)
            let before = target.callCounts
            scenario.operation(f, saved)
            calls = target.callCounts.merging(before) { $0 - $1 }.filter { $0.value > 0 }
            #expect(f.emulator.lastRouteError == nil)
            verifyEmulator(f, guest, "\(scenario.name), no fault")
            f.emulator.reset()
        }
        if target is KVMTarget { #expect(!calls.isEmpty, "\(scenario.name) makes KVM calls") }
        let attacks = attackEachCall(calls, on: target, scenario.name) { call, index, label in
            let f = Function(target)
            let saved = scenario.prepare(f)
            #expect(f.emulator.lastRouteError == nil, "\(label): prepared without errors")
            target.fail(call, after: index, errno: RouteFaultTests.injected)
            scenario.operation(f, saved)
            target.clearFaults()
            if scenario.reportsEveryCall || call == "KVM_SET_GSI_ROUTING" {
                #expect(
                    f.emulator.lastRouteError == .call(call, RouteFaultTests.injected),
                    "\(label): the error names the call")
            } else {
                #expect(f.emulator.lastRouteError == nil, "\(label): a drop's failure is nobody's error")
            }
            verifyEmulator(f, guest, label)
            #expect(target.invariantViolations(f.routes).isEmpty, "\(label): \(target.invariantViolations(f.routes))")
            // The guest repeats the write; nothing fails now.
            scenario.operation(f, saved)
            verifyEmulator(f, guest, "\(label), then repeated")
            #expect(
                target.invariantViolations(f.routes).isEmpty,
                "\(label), then repeated: \(target.invariantViolations(f.routes))")
            f.emulator.reset()
        }
        print("\(target.name): emulator: \(scenario.name): calls \(describe(calls)), \(attacks) attacks")
        #expect(target.freeGsis == freeBefore, "\(target.name): \(scenario.name): no GSI leaked")
    }
}

/// The emulator's promise, checked against a real guest: a live vector
/// delivers its table message to the right vCPU and vector; a vector that is
/// not live delivers nothing and shows the signal as its pending bit. Then
/// every live vector's table message agrees with what was delivered.
func verifyEmulator(
    _ f: Function, _ guest: CountingGuest, _ label: String, sourceLocation: SourceLocation = #_sourceLocation
) {
    // Let deliveries that a repeated write released (pending bits) land first.
    guest.settle()
    var expectedTotal = guest.total
    var dead: [Int] = []
    for v in 0..<Function.vectors {
        guard f.emulator.isLive(v) else {
            dead.append(v)
            continue
        }
        let msi = f.message(v)
        let cpu = Int(msi.destinationID)
        let count = guest.count(cpu: cpu, vector: msi.vector)
        f.emulator.signal(vector: v)
        #expect(
            guest.waitFor(cpu: cpu, vector: msi.vector, count: count + 1), "\(label): live vector \(v) delivers",
            sourceLocation: sourceLocation)
        expectedTotal += 1
    }
    for v in dead { f.emulator.signal(vector: v) }
    guest.settle()
    #expect(
        guest.total == expectedTotal, "\(label): only live vectors delivered, once each", sourceLocation: sourceLocation
    )
    for v in dead {
        #expect(
            f.emulator.isPending(v), "\(label): vector \(v), not live, shows its signal as pending",
            sourceLocation: sourceLocation)
    }
}
#endif
