#if os(Linux)
import Foundation

// Each device type as it crosses to a successor VMM in a hand-off state
// (``VirtioDeviceHandOffState``): what was chosen when the device was made,
// checked again by the type's own initializer when it is decoded, so a state
// cannot make a type its initializer refuses.

extension VirtioBlk: Codable {
    private enum CodingKeys: String, CodingKey { case queues }

    /// Decodes a block type, refusing what ``init(queues:)`` refuses.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let queues = try container.decode(Int.self, forKey: .queues)
        do { self = try VirtioBlk(queues: queues) } catch {
            throw DecodingError.dataCorruptedError(forKey: .queues, in: container, debugDescription: "\(error)")
        }
    }

    /// Encodes the number of request queues.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(queueCount, forKey: .queues)
    }
}

extension VirtioNet: Codable {
    private enum CodingKeys: String, CodingKey {
        case queuePairs
        case mac
    }

    /// Decodes a network type, refusing what ``init(queuePairs:mac:)`` refuses.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let pairs = try container.decode(Int.self, forKey: .queuePairs)
        let mac = try container.decode([UInt8].self, forKey: .mac)
        do { self = try VirtioNet(queuePairs: pairs, mac: mac) } catch {
            throw DecodingError.dataCorruptedError(forKey: .queuePairs, in: container, debugDescription: "\(error)")
        }
    }

    /// Encodes the queue pairs and the MAC address.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(queuePairs, forKey: .queuePairs)
        try container.encode(mac, forKey: .mac)
    }
}

extension VirtioFs: Codable {
    private enum CodingKeys: String, CodingKey {
        case tag
        case requestQueues
    }

    /// Decodes a file-system type, refusing what ``init(tag:requestQueues:)`` refuses.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let tag = try container.decode(String.self, forKey: .tag)
        let queues = try container.decode(Int.self, forKey: .requestQueues)
        do { self = try VirtioFs(tag: tag, requestQueues: queues) } catch {
            throw DecodingError.dataCorruptedError(forKey: .tag, in: container, debugDescription: "\(error)")
        }
    }

    /// Encodes the tag and the number of request queues.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(tag, forKey: .tag)
        try container.encode(requestQueues, forKey: .requestQueues)
    }
}
#endif
