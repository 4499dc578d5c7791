#if os(Linux)
import Foundation
import IrqFdCore
import TestSupport
import Testing
import TinyVM

/// The open-descriptor count once it has stopped changing. A test that
/// just released a TinyVM may still hold its descriptors for a moment: the
/// vCPU threads let go of the VM after `wait()` returned (much later under a
/// sanitizer), and descriptors closing during a test must not pass for a
/// difference the test made.
func settledDescriptorCount() -> Int {
    // Unchanged for 200 ms in a row (a preempted vCPU thread can sit on a
    // released VM for tens of milliseconds under a sanitizer); at most 5 s.
    var count = openDescriptorCount()
    var steady = 0
    for _ in 0..<250 where steady < 10 {
        usleep(20_000)
        let now = openDescriptorCount()
        steady = now == count ? steady + 1 : 0
        count = now
    }
    return count
}

/// Whether AddressSanitizer or ThreadSanitizer runs in this process: then
/// resident memory and malloc's figures measure the sanitizer (quarantine,
/// shadow memory), not the code under test.
let underSanitizer =
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil
    || dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_init") != nil

/// Resident set size of this process in bytes (/proc/self/statm, field 2, in pages).
func residentSetBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return -1 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return -1 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// A positive integer from the environment, or `fallback`.
func environmentCount(_ name: String, default fallback: Int) -> Int {
    guard let text = ProcessInfo.processInfo.environment[name], let value = Int(text), value > 0 else {
        return fallback
    }
    return value
}

/// A seed from `name` in the environment, or a fresh one; printed either way
/// so that a failing run can be repeated exactly.
func announcedSeed(_ name: String, for what: String) -> UInt64 {
    let seed: UInt64
    if let text = ProcessInfo.processInfo.environment[name], let value = UInt64(text) {
        seed = value
    } else {
        seed = UInt64.random(in: 1...UInt64(UInt32.max))
    }
    print("\(what): seed \(seed) (repeat with \(name)=\(seed))")
    return seed
}

#endif
