#if os(Linux)
import Foundation

/// Connections a listener on `path` accepted and still has open: /proc/net/unix lists an
/// accepted socket under its listener's path, without __SO_ACCEPTCON (unix(7)). -1 when
/// the table cannot be read.
public func acceptedUnixConnections(listeningAt path: String) -> Int {
    guard let file = FileHandle(forReadingAtPath: "/proc/net/unix") else { return -1 }
    defer { try? file.close() }
    let table = String(decoding: file.readDataToEndOfFile(), as: UTF8.self)
    let path = Substring(path)
    return table.split(separator: "\n").dropFirst().filter { line in
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        // A backend that listens under a temporary name and renames it into place is listed under that name.
        guard fields.count >= 8, fields[7] == path || fields[7].hasPrefix(path + "."),
            let flags = UInt32(fields[3], radix: 16)
        else { return false }
        return flags & 0x10000 == 0
    }.count
}
#endif
