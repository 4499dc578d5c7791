#if os(Linux)
public import Foundation
import Synchronization

/// One of the package's executables, which `swift test` builds next to the test bundle.
public func builtExecutable(_ name: String) throws -> URL {
    let me = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
    var directory = me.deletingLastPathComponent()
    // The bundle may be a directory (…/Foo.xctest/…) or a plain executable.
    while !directory.path.isEmpty, directory.path != "/" {
        let candidate = directory.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        directory.deleteLastPathComponent()
    }
    throw TestFailure("\(name) was not built next to \(me.path): run `swift build` first")
}

/// A test could not do what it needed to, and why.
public struct TestFailure: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    /// A failure described by `description`.
    public init(_ description: String) { self.description = description }
}

/// Runs `executable` with `arguments` (and `environment` added to this
/// process's) to the end; returns its exit status, standard output and standard error.
public func runProcess(
    _ executable: URL, _ arguments: [String], environment: [String: String] = [:]
) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Drain both pipes concurrently so neither fills up and blocks the child.
    let stdoutData = LockedData()
    let reader = Thread { stdoutData.set(output.fileHandleForReading.readDataToEndOfFile()) }
    reader.start()
    let errorData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while !stdoutData.isSet { usleep(1_000) }
    return (
        process.terminationStatus, String(decoding: stdoutData.value, as: UTF8.self),
        String(decoding: errorData, as: UTF8.self)
    )
}

/// Data written once by a reader thread and read after it is set.
private final class LockedData: Sendable {
    private let data = Mutex<Data?>(nil)
    func set(_ value: Data) { data.withLock { $0 = value } }
    var isSet: Bool { data.withLock { $0 != nil } }
    var value: Data { data.withLock { $0 ?? Data() } }
}
#endif
