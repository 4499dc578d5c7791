#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import PCI
import SystemPackage
import TestSupport
import Testing
import TinyVM

/// A running guest handed from VMM process to VMM process (`irqfd run
/// --incoming ... --update-socket ...`) while a device signals it throughout.
@Suite(needsKVM, .serialized) struct LiveUpdateProcessTests {
    static let handOffs = Int(ProcessInfo.processInfo.environment["IRQFD_LIVE_UPDATE_HANDOFFS"] ?? "") ?? 20
    /// The routes count in the line each successor prints, if it is that line.
    static func routesInLine(_ line: String) -> Int? {
        guard let match = line.wholeMatch(of: #/live update: paused \d+ µs; (\d+) routes, 0 queues, 0 vhost-user messages/#)
        else { return nil }
        return Int(match.1)
    }

    @Test(arguments: InterruptDelivery.allCases)
    func aChainOfSuccessorsLosesNoInterruptAndKeepsTheMaskedVectorPending(delivery: InterruptDelivery) throws {
        let chain = try LiveUpdateChain(delivery: delivery, name: "chain")
        defer { chain.finish() }
        try chain.startSignalling()
        // The wake route, and the device's routed vectors (none under userspace delivery).
        let routes = delivery == .userspace ? 1 : 3
        for handOff in 1...Self.handOffs {
            usleep(3_000)
            let line = try chain.handOff()
            #expect(Self.routesInLine(line) == routes, "hand-off \(handOff): \(line)")
            #expect(try chain.remote.readPBA() == 0b10, "hand-off \(handOff): the pending bit moved")
            #expect(chain.lost == 0, "hand-off \(handOff)")
            if chain.lost != 0 { break }
        }
        chain.stopSignalling()
        let sent = chain.sent
        print("DEBUG \(delivery): sent \(sent), last line: \(chain.log(chain.processes.count))")
        #expect(chain.lost == 0)
        #expect(sent > Self.handOffs, "the device signalled throughout")
        #expect(chain.remote.count(LiveUpdateChain.liveVector) == UInt32(sent), "every signal once")
        #expect(chain.remote.count(LiveUpdateChain.maskedVector) == 0, "masked: nothing delivered")
        try chain.remote.setMasked(1, false)
        #expect(chain.remote.waitForCount(LiveUpdateChain.maskedVector, atLeast: 1), "unmask delivers it")
        usleep(50_000)
        #expect(chain.remote.count(LiveUpdateChain.maskedVector) == 1, "once")
        #expect(try chain.remote.readPBA() == 0)
        // The guest is in the last process: its exit is that process's status.
        try chain.remote.exit(42)
        let last = try #require(chain.processes.last)
        #expect(try LiveUpdateChain.exitStatus(last) == 42, "\(chain.log(chain.processes.count))")
    }
}
#endif
