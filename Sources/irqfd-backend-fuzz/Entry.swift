// irqfd-backend-fuzz: coverage-guided fuzzing of the embedded back-end's
// front-end message decoder and the descriptor-chain walker.
//
// Built with `-sanitize=fuzzer,address -D FUZZING` (Tools/fuzz-backend), it is
// a libFuzzer target (its entry point runs libFuzzer's driver). Built plainly (swift build),
// it replays the files or directories of files given as arguments (the kept
// corpus), so an input once found stays a test.
#if os(Linux)
import Glibc

#if FUZZING
/// libFuzzer's callback: one input.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: count))
    return 0
}

/// libFuzzer's driver (compiler-rt FuzzerDriver.cpp), for a program whose main is not libFuzzer's.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// The executable's entry point as SwiftPM links it (it renames main): hands over to libFuzzer.
@_cdecl("irqfd_backend_fuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runFuzzerDriver(&argc, &argv) { data, count in
        fuzzOne(UnsafeRawBufferPointer(start: data, count: count))
        return 0
    }
}
#else
@main
enum Replay {
    /// The bytes of the file at `path`, or nil.
    static func contents(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count == 0 { break }
            bytes += buffer[0..<count]
        }
        return bytes
    }

    /// The entries of the directory at `path` (without . and ..), or nil when it is not one.
    static func entries(_ path: String) -> [String]? {
        guard let directory = opendir(path) else { return nil }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if !name.hasPrefix(".") { names.append(path + "/" + name) }
        }
        return names.sorted()
    }

    static func main() {
        var replayed = 0
        for argument in CommandLine.arguments.dropFirst() {
            for path in entries(argument) ?? [argument] {
                guard let bytes = contents(path) else { continue }
                bytes.withUnsafeBytes { fuzzOne($0) }
                replayed += 1
            }
        }
        print("irqfd-backend-fuzz: replayed \(replayed) inputs")
    }
}
#endif
#endif
