import Foundation

/// Whether an executable `name` is in one of PATH's directories (/usr/bin:/bin
/// when PATH is unset) or in one of `fallbacks`, which is where the package's
/// launchers look for it: a test of a third-party back-end skips (and says
/// so) exactly when the code under test would not find it.
public func isInstalled(_ name: String, fallbacks: [String] = []) -> Bool {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return (path.split(separator: ":").map(String.init) + fallbacks).contains {
        FileManager.default.isExecutableFile(atPath: "\($0)/\(name)")
    }
}
