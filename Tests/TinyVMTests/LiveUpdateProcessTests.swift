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
        guard
            let match = line.wholeMatch(
                of: #/live update: paused \d+ µs; (\d+) routes, 0 queues, 0 vhost-user messages/#)
        else { return nil }
        return Int(match.1)
    }

    @Test(arguments: InterruptDelivery.allCases)
    func aChainOfSuccessorsLosesNoInterruptAndKeepsTheMaskedVectorPending(delivery: InterruptDelivery) throws {
        let chain = try LiveUpdateChain(delivery: delivery, name: "chain")
        defer { chain.finish() }
        try chain.startSignalling()
        // The wake route, and the device's routed vectors (none under userspace delivery).
        let routes = delivery == .userspace ? 1 : 1 + LiveUpdateChain.vectors
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
        print(
            "live update (\(delivery)): \(Self.handOffs) hand-offs across processes, \(sent) signals, \(chain.lost) lost"
        )
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
        #expect(try RunGenerations.exitStatus(last) == 42, "\(chain.log(chain.processes.count))")
    }

    /// Where a successor that is not one breaks off.
    enum Misbehaviour: String, CaseIterable {
        case closesBeforeHello, asksForAnUnknownVersion, sendsGarbageForHello, saysNothing
        case closesAfterTheOffer, neverPrepares, closesInThePause, sendsGarbageForReady, staysSilentInThePause
    }

    /// A successor to the VMM at `path` that breaks off at `misbehaviour`,
    /// then waits for the old VMM to close the connection.
    static func misbehave(_ misbehaviour: Misbehaviour, at path: String) throws {
        let socket = try UnixSocket.connect(to: path, deadline: .now + .seconds(5))
        let channel = LiveUpdateChannel(socket)
        let deadline = ContinuousClock.now + .seconds(15)
        func expectClosed() {
            do {
                _ = try channel.receive(.commit, maximumDescriptors: 8, step: "test", deadline: deadline)
                Issue.record("\(misbehaviour): the old VMM went on")
            } catch {
                #expect(error.description.contains("closed"), "\(misbehaviour): \(error)")
            }
        }
        func hello(_ lowest: UInt32, _ highest: UInt32) throws {
            var bytes: [UInt8] = []
            withUnsafeBytes(of: lowest.littleEndian) { bytes += $0 }
            withUnsafeBytes(of: highest.littleEndian) { bytes += $0 }
            try channel.send(.hello, bytes, step: "test", deadline: deadline)
        }
        let garbage = Array("GARBAGE GARBAGE GARBAGE".utf8)
        switch misbehaviour {
        case .closesBeforeHello: return
        case .asksForAnUnknownVersion:
            try hello(99, 99)
            return expectClosed()
        case .sendsGarbageForHello:
            try socket.send(garbage, deadline: deadline)
            return expectClosed()
        case .saysNothing: return expectClosed()
        default: try hello(1, 1)
        }
        let (_, ram) = try channel.receive(.offer, maximumDescriptors: 1, step: "test", deadline: deadline)
        #expect(ram.count == 1, "the RAM memfd")
        if misbehaviour == .closesAfterTheOffer { return }
        if misbehaviour == .neverPrepares { return expectClosed() }
        try channel.send(.prepared, step: "test", deadline: deadline)
        let (state, _) = try channel.receive(.state, step: "test", deadline: deadline)
        func u32(at offset: Int) -> Int {
            Int(state[offset..<offset + 4].withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) })
        }
        let devices = u32(at: 12)
        let total = u32(at: 8) + (0..<devices).reduce(0) { $0 + u32(at: 16 + 4 * $1) }
        let descriptors = try channel.receiveDescriptors(total, step: "test", deadline: deadline)
        #expect(descriptors.count == total)
        switch misbehaviour {
        case .closesInThePause: return
        case .sendsGarbageForReady:
            try socket.send(garbage, deadline: deadline)
            expectClosed()
        default: expectClosed()
        }
    }

    @Test(arguments: InterruptDelivery.allCases)
    func aHandOffThatFailsAtAnyStepLeavesTheGuestRunningOnTheOldVMM(delivery: InterruptDelivery) throws {
        let chain = try LiveUpdateChain(delivery: delivery, name: "fail")
        defer { chain.finish() }
        try chain.startSignalling()
        // The old VMM under test is the first `irqfd run --incoming` process.
        try chain.handOff()
        let old = try #require(chain.processes.first)
        let pid = old.processIdentifier
        // Its descriptors once it has settled (threads that open one lazily have run).
        usleep(200_000)
        let baseline = LiveUpdateChain.openDescriptors(pid)
        for (index, misbehaviour) in Misbehaviour.allCases.enumerated() {
            let before = chain.sent
            try Self.misbehave(misbehaviour, at: chain.socket(1))
            let failures = { chain.log(1).components(separatedBy: "live update failed").count - 1 }
            let deadline = ContinuousClock.now + .seconds(15)
            while failures() <= index, ContinuousClock.now < deadline { usleep(1_000) }
            #expect(failures() == index + 1, "\(misbehaviour): one line each: \(chain.log(1))")
            #expect(old.isRunning, "\(misbehaviour)")
            var open = LiveUpdateChain.openDescriptors(pid)
            let settle = ContinuousClock.now + .seconds(3)
            while open != baseline, ContinuousClock.now < settle {
                usleep(10_000)
                open = LiveUpdateChain.openDescriptors(pid)
            }
            #expect(open == baseline, "\(misbehaviour): descriptors of the old VMM")
            // The guest runs on there: the device's signals keep arriving.
            let progress = ContinuousClock.now + .seconds(20)
            while chain.sent < before + 20, chain.lost == 0, ContinuousClock.now < progress { usleep(1_000) }
            #expect(chain.sent >= before + 20 && chain.lost == 0, "\(misbehaviour): the guest runs on")
            #expect(try chain.remote.readPBA() == 0b10, "\(misbehaviour): the pending bit stays")
        }
        // A real successor then takes over as usual.
        let line = try chain.handOff()
        #expect(Self.routesInLine(line) != nil, "\(line)")
        chain.stopSignalling()
        #expect(chain.lost == 0)
        #expect(chain.remote.count(LiveUpdateChain.liveVector) == UInt32(chain.sent), "every signal once")
        try chain.remote.setMasked(1, false)
        #expect(chain.remote.waitForCount(LiveUpdateChain.maskedVector, atLeast: 1), "unmask delivers it")
        usleep(50_000)
        #expect(chain.remote.count(LiveUpdateChain.maskedVector) == 1, "once")
        try chain.remote.exit(42)
        let last = try #require(chain.processes.last)
        #expect(try RunGenerations.exitStatus(last) == 42, "\(chain.log(chain.processes.count))")
    }

    /// Where an old VMM that is not one breaks off.
    enum OldMisbehaviour: String, CaseIterable {
        case offersAnUnknownVersion, sendsGarbageForTheState, closesAfterThePreparedVM
    }

    /// A successor given something it cannot take exits 1 with one line and leaves the old VMM be.
    @Test(arguments: OldMisbehaviour.allCases)
    func aSuccessorRefusesWhatItCannotTakeAndSaysSoInOneLine(misbehaviour: OldMisbehaviour) throws {
        let irqfd = try builtExecutable("irqfd")
        let path = "/tmp/irqfd-lu-old-\(getpid())-\(misbehaviour).sock"
        let listener = try UnixSocket.listen(at: path)
        let ram = try GuestMemory(size: 16 << 20)
        let process = Process()
        process.executableURL = irqfd
        process.arguments = ["run", "--incoming", path, "--timeout", "5"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // The conversation in a function of its own: the connection closes when it returns.
        func converse() throws {
            let channel = LiveUpdateChannel(try listener.accept())
            let deadline = ContinuousClock.now + .seconds(20)
            let (hello, _) = try channel.receive(.hello, step: "test", deadline: deadline)
            #expect(hello.count == 8 && hello[0] == 1, "reads version 1: \(hello)")
            var offer: [UInt8] = []
            let version: UInt32 = misbehaviour == .offersAnUnknownVersion ? 99 : 1
            withUnsafeBytes(of: version.littleEndian) { offer += $0 }
            withUnsafeBytes(of: UInt32(1).littleEndian) { offer += $0 }
            withUnsafeBytes(of: UInt64(16 << 20).littleEndian) { offer += $0 }
            offer.append(1)
            try channel.send(.offer, offer, descriptors: [ram.fileDescriptor], step: "test", deadline: deadline)
            if misbehaviour != .offersAnUnknownVersion {
                _ = try channel.receive(.prepared, step: "test", deadline: deadline)
                if misbehaviour == .closesAfterThePreparedVM { return }
                try channel.send(.state, Array(repeating: 0x5A, count: 64), step: "test", deadline: deadline)
            }
            // Nothing more comes from the successor: it closes.
            #expect(throws: LiveUpdateError.self) {
                _ = try channel.receive(.ready, step: "test", deadline: deadline)
            }
        }
        try converse()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 1, "\(stderr)")
        let lines = stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("irqfd run: live update failed: "), "\(stderr)")
    }

    /// The command line end to end: `irqfd run GUEST.bin --update-socket`, a
    /// successor that listens for a third, and the third; each old process
    /// exits 0, each successor prints the line, and the last one's
    /// `--timeout` counts from its takeover.
    @Test func irqfdRunHandsItsGuestToASuccessorWhichHandsItToAThird() throws {
        let irqfd = try builtExecutable("irqfd")
        let base = "/tmp/irqfd-lu-cli-\(getpid())"
        let image = base + ".bin"
        try Data(GuestProgram.interruptCounter.image).write(to: URL(fileURLWithPath: image))
        defer { try? FileManager.default.removeItem(atPath: image) }
        func start(_ arguments: [String]) throws -> (Process, Pipe) {
            let process = Process()
            process.executableURL = irqfd
            process.arguments = ["run"] + arguments
            let errors = Pipe()
            process.standardError = errors
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            return (process, errors)
        }
        func finish(_ started: (Process, Pipe)) -> (Int32, String) {
            let text = String(decoding: started.1.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            started.0.waitUntilExit()
            return (started.0.terminationStatus, text)
        }
        let first = try start([image, "--update-socket", base + "-0.sock", "--timeout", "60"])
        // The first VMM listens once its guest runs; a successor started before that would find no socket.
        while !FileManager.default.fileExists(atPath: base + "-0.sock"), first.0.isRunning { usleep(1_000) }
        let second = try start(["--incoming", base + "-0.sock", "--update-socket", base + "-1.sock", "--timeout", "60"])
        let (firstStatus, firstErrors) = finish(first)
        #expect(firstStatus == 0 && firstErrors.isEmpty, "\(firstErrors)")
        while !FileManager.default.fileExists(atPath: base + "-1.sock"), second.0.isRunning { usleep(1_000) }
        let third = try start(["--incoming", base + "-1.sock", "--timeout", "1"])
        let (secondStatus, secondErrors) = finish(second)
        #expect(secondStatus == 0, "\(secondErrors)")
        #expect(Self.routesInLine(secondErrors.trimmingCharacters(in: .newlines)) != nil, "\(secondErrors)")
        let began = ContinuousClock.now
        let (thirdStatus, thirdErrors) = finish(third)
        #expect(thirdStatus == 124, "the guest timed out in the third process: \(thirdErrors)")
        #expect(ContinuousClock.now - began < .seconds(30))
        let lines = thirdErrors.split(separator: "\n")
        #expect(lines.count == 2 && Self.routesInLine(String(lines[0])) != nil, "\(thirdErrors)")
    }

    /// Whoever reads a successor's hand-off line may start the next
    /// successor at once: the successor's `--update-socket` listens before
    /// it prints the line. Its standard error is a pipe already full, so the
    /// line's write blocks: a successor that printed before listening would
    /// never make its socket.
    @Test func aSuccessorListensForTheNextBeforeItPrintsItsHandOffLine() throws {
        let runs = try RunGenerations(name: "irqfd-lu-order-\(getpid())")
        let image = "/tmp/\(runs.name).bin"
        try Data(GuestProgram.interruptCounter.image).write(to: URL(fileURLWithPath: image))
        defer {
            runs.killRunning()
            runs.removeFiles()
            try? FileManager.default.removeItem(atPath: image)
        }
        let first = try runs.start(0, [image, "--update-socket", runs.socket(0), "--timeout", "60"])
        while !FileManager.default.fileExists(atPath: runs.socket(0)), first.isRunning { usleep(1_000) }

        // Fill the pipe without blocking, then make it blocking again for the successor.
        let errors = Pipe()
        let writer = errors.fileHandleForWriting.fileDescriptor
        let flags = fcntl(writer, F_GETFL)
        _ = fcntl(writer, F_SETFL, flags | O_NONBLOCK)
        let chunk = [UInt8](repeating: UInt8(ascii: "."), count: 4096)
        var filler = 0
        while true {
            let written = chunk.withUnsafeBytes { write(writer, $0.baseAddress, $0.count) }
            guard written > 0 else { break }
            filler += written
        }
        _ = fcntl(writer, F_SETFL, flags)
        #expect(filler >= 4096)

        let second = try runs.start(
            1, ["--incoming", runs.socket(0), "--update-socket", runs.socket(1), "--timeout", "60"],
            standardError: errors.fileHandleForWriting)
        try errors.fileHandleForWriting.close()
        let deadline = ContinuousClock.now + .seconds(30)
        while !FileManager.default.fileExists(atPath: runs.socket(1)), second.isRunning,
            ContinuousClock.now < deadline
        {
            usleep(1_000)
        }
        #expect(
            FileManager.default.fileExists(atPath: runs.socket(1)),
            "no update socket while the hand-off line waits to be written")

        // Now let the line through: it follows the filler.
        var text: [UInt8] = []
        let reader = errors.fileHandleForReading.fileDescriptor
        var buffer = [UInt8](repeating: 0, count: 4096)
        while text.count <= filler || !text[filler...].contains(UInt8(ascii: "\n")) {
            let got = buffer.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
            guard got > 0 else { break }
            text += buffer[..<got]
        }
        let line = String(decoding: text.dropFirst(filler), as: UTF8.self).trimmingCharacters(in: .newlines)
        #expect(Self.routesInLine(line) != nil, "\(line)")
        #expect(try RunGenerations.exitStatus(first) == 0, "the first VMM handed over: \(runs.log(0))")
    }
}
#endif
