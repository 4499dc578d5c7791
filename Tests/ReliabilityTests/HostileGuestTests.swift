#if os(Linux)
import Foundation
import CReliability
import TestSupport
import Testing
import TinyVM

/// A hostile guest image, with the outcomes a correct VMM may give it.
struct HostileGuest: Sendable, CustomTestStringConvertible {
    let name: String
    let image: @Sendable () -> [UInt8]
    let cpus: Int
    /// Whether `outcome` is a right ending for this guest.
    let accepts: @Sendable (Outcome) -> Bool
    /// The `irqfd run` exit statuses that go with those endings.
    let statuses: Set<Int32>
    var testDescription: String { name }

    static func bytes(_ accessor: (UnsafeMutablePointer<Int>) -> UnsafePointer<UInt8>?) -> [UInt8] {
        var length = 0
        let start = accessor(&length)
        return Array(UnsafeBufferPointer(start: start, count: length))
    }

    static func isTimeout(_ o: Outcome) -> Bool { if case .timedOut = o { true } else { false } }
    static func isAnyFault(_ o: Outcome) -> Bool { if case .fault = o { true } else { false } }
    static func isFault(_ o: Outcome, _ text: String) -> Bool {
        if case .fault(let why) = o { why.contains(text) } else { false }
    }

    static let all: [HostileGuest] = [
        HostileGuest(
            name: "writes every size over MMIO, past RAM, ports and PCI config, then exits 7",
            image: { bytes { hostile_scribble($0) } }, cpus: 1, accepts: { $0 == .exited(code: 7) }, statuses: [7]),
        HostileGuest(
            name: "the same on two vCPUs at once", image: { bytes { hostile_scribble($0) } }, cpus: 2,
            accepts: { $0 == .exited(code: 7) }, statuses: [7]),
        HostileGuest(
            // Where it runs to depends on timing (how far it got when the
            // timeout fires): on forever through zeroed RAM, or into code
            // KVM's emulator refuses. Either ends clearly.
            name: "smashes its IVT, stack and code, then runs wild", image: { bytes { hostile_smash($0) } }, cpus: 1,
            accepts: { isTimeout($0) || isAnyFault($0) }, statuses: [124, 125]),
        HostileGuest(
            // Real hardware triple-faults; this machine's KVM emulator ignores a real-mode
            // IDT limit and takes vector 3 from the IVT (a fault report); a KVM that resumes
            // a shut-down vCPU leaves only the timeout. Each is a clear ending.
            name: "empties its IDT and raises INT 3", image: { bytes { hostile_triple($0) } }, cpus: 1,
            accepts: { isTimeout($0) || isAnyFault($0) }, statuses: [124, 125]),
        HostileGuest(
            name: "halts with interrupts off", image: { bytes { hostile_halt($0) } }, cpus: 2,
            accepts: { isTimeout($0) }, statuses: [124]),
        HostileGuest(
            name: "spins with interrupts off", image: { GuestProgram.spin.image }, cpus: 1,
            accepts: { isTimeout($0) }, statuses: [124]),
        HostileGuest(
            name: "executes an invalid opcode with no handler", image: { GuestProgram.fault.image }, cpus: 2,
            accepts: { isFault($0, "unhandled exception vector 6") }, statuses: [125]),
    ]
}

/// Guests that attack the VMM: each ends with a clear outcome (and, run by
/// `irqfd run`, a one-line message and the right exit status), and the VMM
/// process is unharmed.
@Suite(needsKVM, .serialized) struct HostileGuestTests {
    @Test(arguments: HostileGuest.all)
    func aHostileGuestEndsClearly(_ guest: HostileGuest) throws {
        let vm = try TinyVM(.init(cpus: guest.cpus))
        try vm.load(guest.image())
        let outcome = vm.run(timeout: .seconds(3))
        print("hostile guest (\(guest.name)): \(outcome); \(vm.unhandledAccessCount) unclaimed accesses")
        #expect(guest.accepts(outcome), "\(guest.name): \(outcome)")
        if outcome == .exited(code: 7) {
            #expect(vm.consoleOutput.hasSuffix("scribbled\n"), "the guest ran to its end")
            #expect(vm.unhandledAccessCount > 0, "unclaimed accesses were counted, not fatal")
        }
    }

    @Test(arguments: HostileGuest.all)
    func irqfdRunEndsAHostileGuestWithTheRightStatusAndOneLine(_ guest: HostileGuest) throws {
        let image = try TemporaryFile(contents: guest.image())
        let result = try runIrqfd(["run", image.path, "--timeout", "3", "--cpus", "\(guest.cpus)"])
        #expect(
            guest.statuses.contains(result.status),
            "\(guest.name): exit status \(result.status), stderr: \(result.standardError)")
        if result.status != 7 {
            let lines = result.standardError.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("irqfd run: "), "one clear line: \(result.standardError)")
        }
    }
}

/// What `irqfd run` says about images it cannot run: one line on standard
/// error, exit status 1, no guest started.
@Suite(needsKVM, .serialized) struct BadImageTests {
    @Test func anEmptyFileIsRefusedInOneLine() throws {
        let empty = try TemporaryFile(contents: [])
        try expectRefusal(["run", empty.path], mentioning: "empty")
    }

    @Test func aFileBiggerThanRAMIsRefusedInOneLine() throws {
        // 16 MiB of RAM with the image at 0x1000: 16 MiB is 4 KiB too many.
        let big = try TemporaryFile(size: 16 << 20)
        try expectRefusal(["run", big.path], mentioning: "do not fit")
    }

    @Test func aDirectoryIsRefusedInOneLine() throws {
        try expectRefusal(["run", NSTemporaryDirectory()], mentioning: "directory")
    }

    @Test func aMissingPathIsRefusedInOneLine() throws {
        try expectRefusal(
            ["run", "/nonexistent/irqfd-guest-\(UInt32.random(in: 0...UInt32.max)).bin"], mentioning: "no such file")
    }

    @Test func anUnreadableFileIsRefusedInOneLine() throws {
        let file = try TemporaryFile(contents: [0xF4])
        chmod(file.path, 0)
        defer { chmod(file.path, 0o600) }
        // Root reads anything: then the file runs (and falls off its end into zeros), which is fine too.
        guard getuid() != 0 else { return }
        try expectRefusal(["run", file.path], mentioning: "read")
    }

    func expectRefusal(
        _ arguments: [String], mentioning text: String, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let result = try runIrqfd(arguments)
        #expect(result.status == 1, "exit status \(result.status)", sourceLocation: sourceLocation)
        let lines = result.standardError.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
        #expect(lines.count == 1, "one line, not: \(result.standardError)", sourceLocation: sourceLocation)
        #expect(
            result.standardError.hasPrefix("irqfd run: ") && result.standardError.contains(text),
            "\(result.standardError)", sourceLocation: sourceLocation)
        #expect(result.standardOutput.isEmpty, "no guest ran", sourceLocation: sourceLocation)
    }
}

/// A file in the temporary directory, removed when released.
final class TemporaryFile {
    let path: String
    init(contents: [UInt8]) throws {
        path = NSTemporaryDirectory() + "irqfd-reliability-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).bin"
        guard FileManager.default.createFile(atPath: path, contents: Data(contents)) else {
            throw CocoaError(.fileWriteUnknown)
        }
    }
    /// A sparse file of `size` bytes.
    convenience init(size: Int) throws {
        try self.init(contents: [])
        guard truncate(path, off_t(size)) == 0 else { throw CocoaError(.fileWriteUnknown) }
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Runs the built `irqfd` with `arguments`; returns its exit status and output.
func runIrqfd(_ arguments: [String]) throws -> (status: Int32, standardOutput: String, standardError: String) {
    let result = try runProcess(try builtExecutable("irqfd"), arguments)
    return (result.status, result.stdout, result.stderr)
}
#endif
