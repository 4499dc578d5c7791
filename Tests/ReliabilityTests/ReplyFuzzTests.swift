#if os(Linux)
import Foundation
import Glibc
import IrqFdLinux
import SystemPackage
import TestSupport
import Testing
import VhostUser

// Fuzzing, the backend side (TinyVM's Reliability article): the frontend's reply
// parser against a kept corpus (Corpus/vhost-user-replies.txt: each entry
// must be accepted or refused exactly as it says), then seeded mutations of
// it (bit flips, byte and size rewrites, truncations, extensions, splices,
// descriptors, another request's shape). Accepted replies must be
// well-formed; refused ones must be badReply naming the request, never a
// trap. The same mutations then go over a real socket into a
// VhostUserFrontend, where the channel's partial reads, descriptors and
// deadlines are on the path too.
//
// IRQFD_FUZZ_SEED repeats a run; IRQFD_FUZZ_REPLIES (default 100,000 parser
// inputs) and IRQFD_FUZZ_SOCKET_REPLIES (default 400 connections) make it longer.

/// One corpus entry.
struct ReplyCase: CustomStringConvertible {
    var accepted: Bool
    var request: VhostUserRequest
    var shape: VhostUserReplyShape
    var descriptors: Int
    var bytes: [UInt8]
    var note: String

    var description: String {
        "\(accepted ? "ok" : "bad") \(request.name) \(shape) \(descriptors) \(bytes.map { String(format: "%02x", $0) }.joined()) # \(note)"
    }

    static func load() throws -> [ReplyCase] {
        let text = try String(
            contentsOf: corpusDirectory.appendingPathComponent("vhost-user-replies.txt"), encoding: .utf8)
        return try text.split(separator: "\n").compactMap { line throws -> ReplyCase? in
            let parts = line.split(separator: "#", maxSplits: 1)
            let fields = (parts.first ?? "").split(separator: " ")
            guard fields.count == 4 || fields.count == 5 else { return nil }
            guard let request = VhostUserRequest.allCases.first(where: { $0.name == fields[1] }),
                let descriptors = Int(fields[3])
            else {
                throw TestFailureReason("bad corpus line: \(line)")
            }
            let shape: VhostUserReplyShape
            switch fields[2] {
            case "u64": shape = .u64
            case "state": shape = .vringState
            case let s where s.hasPrefix("config:"): shape = .config(size: UInt32(s.dropFirst(7))!)
            default: throw TestFailureReason("bad shape in: \(line)")
            }
            let hex = fields.count == 5 ? Array(fields[4].utf8) : []
            let bytes = stride(from: 0, to: hex.count, by: 2).map {
                UInt8(String(decoding: hex[$0..<($0 + 2)], as: UTF8.self), radix: 16)!
            }
            return ReplyCase(
                accepted: fields[0] == "ok", request: request, shape: shape, descriptors: descriptors, bytes: bytes,
                note: parts.count > 1 ? String(parts[1]).trimmingCharacters(in: .whitespaces) : "")
        }
    }

    /// The parser's verdict: nil when the reply and its typed value are accepted.
    func evaluate() -> VhostUserError? {
        do {
            let payload = try VhostUserReplyParser.parse(
                bytes, descriptorCount: descriptors, for: request, shape: shape)
            switch shape {
            case .u64: _ = try VhostUserReplyParser.u64(payload, for: request)
            case .vringState: _ = try VhostUserReplyParser.vringState(payload, queue: 0, for: request)
            case .config(let size): _ = try VhostUserReplyParser.config(payload, offset: 0, size: size, for: request)
            }
            return nil
        } catch {
            return error
        }
    }

    /// Why an accepted reply is not well-formed, or a refusal not the right kind; nil when consistent.
    func inconsistency(_ verdict: VhostUserError?) -> String? {
        guard let verdict else {
            guard let header = VhostUserHeader(bytes) else { return "accepted without a header" }
            if descriptors != 0 { return "accepted with \(descriptors) descriptors" }
            if header.request != request.rawValue { return "accepted reply type \(header.request) for \(request.name)" }
            if header.flags & VhostUserFlags.reply == 0
                || header.flags & VhostUserFlags.versionMask != VhostUserFlags.version
            {
                return "accepted flags 0x\(String(header.flags, radix: 16))"
            }
            if bytes.count != VhostUserHeader.byteCount + shape.payloadSize || Int(header.size) != shape.payloadSize {
                return "accepted \(bytes.count) bytes for \(shape)"
            }
            return nil
        }
        if case .badReply(request, _) = verdict { return nil }
        return "refused as \(verdict), not badReply(\(request.name))"
    }

    /// A seeded mutation of this case (and sometimes of `other`).
    func mutated(_ r: inout SplitMix64, other: ReplyCase) -> ReplyCase {
        var next = self
        next.note = "mutated"
        for _ in 0..<(1 + r.next() % 3) {
            switch r.next() % 9 {
            case 0 where !next.bytes.isEmpty:  // flip a bit
                let i = Int(r.next() % UInt64(next.bytes.count))
                next.bytes[i] ^= 1 << (r.next() % 8)
            case 1 where !next.bytes.isEmpty:  // rewrite a byte
                next.bytes[Int(r.next() % UInt64(next.bytes.count))] = UInt8(truncatingIfNeeded: r.next())
            case 2 where next.bytes.count >= 12:  // a header size: small, exact-ish, or huge
                let size: UInt32 = [
                    UInt32(truncatingIfNeeded: r.next()), UInt32(r.next() % 300),
                    UInt32(next.bytes.count - 12) &+ UInt32(r.next() % 3) &- 1,
                ][Int(r.next() % 3)]
                withUnsafeBytes(of: size.littleEndian) { for k in 0..<4 { next.bytes[8 + k] = $0[k] } }
            case 3:  // truncate
                next.bytes = Array(next.bytes.prefix(Int(r.next() % UInt64(next.bytes.count + 1))))
            case 4:  // extend
                next.bytes += (0..<(r.next() % 24)).map { _ in UInt8(truncatingIfNeeded: r.next()) }
            case 5:  // splice another entry's tail
                let cut = Int(r.next() % UInt64(next.bytes.count + 1))
                let from = Int(r.next() % UInt64(other.bytes.count + 1))
                next.bytes = Array(next.bytes.prefix(cut)) + other.bytes.dropFirst(from)
            case 6:  // descriptors
                next.descriptors = Int(r.next() % 4)
            case 7:  // parsed as another message's reply
                next.request = other.request
                next.shape = other.shape
            default:  // the flags word
                if next.bytes.count >= 8 { next.bytes[4] = UInt8(truncatingIfNeeded: r.next() % 32) }
            }
        }
        return next
    }
}

/// A peer on a listening socket that answers the first message of each
/// connection with the next of `replies` (and its descriptors), then closes,
/// or, for a reply flagged to hang, waits for the frontend to give up.
final class ReplayingPeer: @unchecked Sendable {
    // @unchecked: the thread owns the accepted sockets; `path`, `listener` and `replies` are immutable.
    let path: String
    let listener: UnixSocket
    let replies: [(bytes: [UInt8], descriptors: Int, hang: Bool)]
    let thread: Thread
    let finished = DispatchSemaphore(value: 0)

    init(_ replies: [(bytes: [UInt8], descriptors: Int, hang: Bool)]) throws {
        path = NSTemporaryDirectory() + "irqfd-replay-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        listener = try UnixSocket.listen(at: path, backlog: 4)
        self.replies = replies
        let (listener, replies, finished) = (listener, replies, finished)
        thread = Thread {
            defer { finished.signal() }
            for reply in replies {
                guard let connection = try? listener.accept() else { return }
                let deadline = ContinuousClock.now + .seconds(60)
                guard let header = try? connection.receive(exactly: 12, maximumDescriptors: 0, deadline: deadline)
                else {
                    continue
                }
                let size = Int(header.bytes[8]) | Int(header.bytes[9]) << 8
                if size > 0 { _ = try? connection.receive(exactly: size, maximumDescriptors: 0, deadline: deadline) }
                let events = (0..<reply.descriptors).compactMap { _ in try? EventFD() }
                // A stream carries descriptors only with bytes: an empty reply sends nothing. A frontend
                // that gave up first fails the send, and nothing is waiting for it any more.
                do throws(UnixSocket.Failure) {
                    try connection.send(reply.bytes, descriptors: events.map(\.fileDescriptor), deadline: deadline)
                } catch {}
                if reply.hang {
                    _ = try? connection.receive(maximum: 1)  // until the frontend closes
                }
            }
        }
        thread.start()
    }
}

@Suite struct ReplyFuzzTests {
    @Test func everyCorpusEntryIsAcceptedOrRefusedAsItSays() throws {
        let corpus = try ReplyCase.load()
        #expect(corpus.count >= 30)
        for entry in corpus {
            let verdict = entry.evaluate()
            #expect((verdict == nil) == entry.accepted, "\(entry): \(String(describing: verdict))")
            #expect(entry.inconsistency(verdict) == nil, "\(entry): \(entry.inconsistency(verdict) ?? "")")
        }
    }

    @Test func mutatedRepliesAreAcceptedOnlyWellFormedAndRefusedTyped() throws {
        let corpus = try ReplyCase.load()
        let seed = announcedSeed("IRQFD_FUZZ_SEED", for: "vhost-user reply fuzz")
        let count = environmentCount("IRQFD_FUZZ_REPLIES", default: 100_000)
        var r = SplitMix64(seed: seed)
        var accepted = 0
        let start = ContinuousClock.now
        for index in 0..<count {
            let base = corpus[Int(r.next() % UInt64(corpus.count))]
            let other = corpus[Int(r.next() % UInt64(corpus.count))]
            let input = base.mutated(&r, other: other)
            let verdict = input.evaluate()
            if verdict == nil { accepted += 1 }
            if let why = input.inconsistency(verdict) {
                Issue.record("seed \(seed) input \(index): \(input): \(why)")
                return
            }
        }
        print(
            "vhost-user reply fuzz: \(count) mutated replies in \(ContinuousClock.now - start), \(accepted) accepted (well-formed), the rest refused as badReply"
        )
    }

    @Test func mutatedRepliesOverTheSocketNeverHangOrMisnameTheMessage() throws {
        let corpus = try ReplyCase.load().filter { $0.request == .getFeatures }
        let seed = announcedSeed("IRQFD_FUZZ_SEED", for: "vhost-user frontend reply fuzz")
        let count = environmentCount("IRQFD_FUZZ_SOCKET_REPLIES", default: 400)
        var r = SplitMix64(seed: seed)
        var inputs: [ReplyCase] = []
        var replies: [(bytes: [UInt8], descriptors: Int, hang: Bool)] = []
        for _ in 0..<count {
            var input = corpus[Int(r.next() % UInt64(corpus.count))].mutated(
                &r, other: corpus[Int(r.next() % UInt64(corpus.count))])
            input.request = .getFeatures
            input.shape = .u64
            inputs.append(input)
            replies.append((input.bytes, input.descriptors, r.next() % 8 == 0))
        }
        let peer = try ReplayingPeer(replies)
        let start = ContinuousClock.now
        var outcomes: [String: Int] = [:]
        for (index, input) in inputs.enumerated() {
            let frontend = try VhostUserFrontend(socketPath: peer.path, timeout: .milliseconds(200))
            let started = ContinuousClock.now
            do {
                let features = try frontend.getFeatures()
                outcomes["accepted", default: 0] += 1
                // Accepted over the wire: the reply's first 20 bytes were a well-formed u64
                // reply (a stream: bytes after it would be the next message's, and fail it).
                var prefix = input
                prefix.bytes = Array(input.bytes.prefix(20))
                #expect(
                    input.descriptors == 0 && prefix.evaluate() == nil
                        && features
                            == input.bytes.dropFirst(12).prefix(8).reversed().reduce(0) { $0 << 8 | UInt64($1) },
                    "seed \(seed) input \(index): \(input) accepted as 0x\(String(features, radix: 16))")
            } catch {
                switch error {
                case .badReply(.getFeatures, _): outcomes["badReply", default: 0] += 1
                case .timeout(.getFeatures): outcomes["timeout", default: 0] += 1
                case .disconnected(.getFeatures): outcomes["disconnected", default: 0] += 1
                default: Issue.record("seed \(seed) input \(index): \(input): \(error) does not name GET_FEATURES")
                }
                #expect(!frontend.isConnected)
            }
            // Every wait has a deadline (200 ms here; generous bound for a loaded machine).
            #expect(ContinuousClock.now - started < .seconds(10), "seed \(seed) input \(index): \(input)")
            frontend.close()
        }
        #expect(peer.finished.wait(timeout: .now() + 30) == .success)
        print(
            "vhost-user frontend reply fuzz: \(count) replies over a socket in \(ContinuousClock.now - start): \(outcomes.sorted { $0.key < $1.key })"
        )
    }
}
#endif
