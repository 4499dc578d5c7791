import Foundation

/// Whether an executable `name` is in one of PATH's directories (/usr/bin:/bin
/// when PATH is unset) or in /usr/bin: a test of a third-party back-end skips
/// (and says so) when it is not installed.
public func isInstalled(_ name: String) -> Bool {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return (path.split(separator: ":").map(String.init) + ["/usr/bin"]).contains {
        FileManager.default.isExecutableFile(atPath: "\($0)/\(name)")
    }
}
