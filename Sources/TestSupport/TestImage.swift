#if os(Linux)
import Foundation
import Glibc

/// A raw disk image for a vhost-user backend to serve, in a private
/// directory of its own (which also has room for the backend's socket);
/// the directory is removed at deinit. Byte `i` of the image is `fill(i)`.
public final class TestImage {
    /// The private directory holding the image.
    public let directory: String
    /// The image file.
    public let path: String
    /// The image's size in 512-byte sectors.
    public let sectors: Int
    private let fill: (Int) -> UInt8

    /// Creates an image of `sectors` sectors whose byte `i` is `fill(i)`.
    public init(sectors: Int, fill: @escaping (Int) -> UInt8 = { _ in 0 }) throws {
        var template = Array((NSTemporaryDirectory() + "irqfd-image-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TestFailure("mkdtemp failed: errno \(errno)")
        }
        directory = String(cString: made)
        path = directory + "/disk.img"
        self.sectors = sectors
        self.fill = fill
        let bytes = (0..<(sectors * 512)).map(fill)
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
            try? FileManager.default.removeItem(atPath: directory)
            throw TestFailure("cannot create \(path)")
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// Sector `s` as the file holds it now (after any writes the backend served).
    public func sector(_ s: Int) throws -> [UInt8] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return [UInt8](data[(s * 512)..<(s * 512 + 512)])
    }

    /// Sector `s` as it was written at creation (`fill`), whatever the file holds now.
    public func filled(sector s: Int) -> [UInt8] { (s * 512..<(s * 512 + 512)).map(fill) }
}
#endif
