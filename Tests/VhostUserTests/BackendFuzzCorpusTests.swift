#if os(Linux)
import Foundation
import Testing
import VhostUser

/// The fuzz target's kept corpus (Tests/Fuzz/BackendCorpus, grown by
/// Tools/fuzz-backend under libFuzzer) replayed through the plainly built
/// target: every input that once reached new code in the message decoder or
/// the descriptor-chain walker runs again here, without a sanitizer runtime.
@Suite struct BackendFuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/BackendCorpus").path

    static var replayer: String? {
        VhostUserBackendProcess.embeddedPath().map {
            URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent("irqfd-backend-fuzz").path
        }
    }

    @Test(.enabled(if: replayer != nil, "skipped: irqfd-backend-fuzz was not built (swift build)"))
    func theKeptCorpusReplaysWithoutACrash() throws {
        let inputs = try FileManager.default.contentsOfDirectory(atPath: Self.corpus).filter { !$0.hasPrefix(".") }
        #expect(inputs.count >= 100, "the kept corpus has \(inputs.count) inputs")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.replayer!)
        process.arguments = [Self.corpus]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(text)")
        #expect(text.contains("replayed \(inputs.count) inputs"), "\(text)")
    }
}
#endif
