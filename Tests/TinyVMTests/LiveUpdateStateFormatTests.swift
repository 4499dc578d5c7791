#if os(Linux)
import Foundation
import KVM
import TestSupport
import Testing
import TinyVM

/// The live-update state format: a successor reads the versions it knows
/// (today's kept as a fixture, so a later build is checked against it) and
/// refuses everything else, so the old VMM carries on.
@Suite struct LiveUpdateStateFormatTests {
    /// A version-1 state written by this format from a real guest: the
    /// interrupt-counting guest paused on one vCPU after taking vector 0x45,
    /// two routes (one with an MSI, one masked without), one device "test".
    static let version1Fixture = Array(
        Data(
            base64Encoded: """
                SVJRRkQtTFUBAAAAd2NOAgAAAAABAAAAkAAAAAAAAAAAAAAAAAAAAAAAAAA1CAAAAAAAAAAAAAAAAAAAAAEAAAAAAACAFwAAAAAA
                AABwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAbxAAAAAAAABGAgAAAAAAADgBAAAAAAAAAAAAAP//AAAAAAsBAAABAAAAAAAAAAAAAAAAAP////8AAAMBAAABAAEAAAAA
                AAAAAAAAAP////8AAAMBAAABAAEAAAAAAAAAAAAAAP////8AAAMBAAABAAEAAAAAAAAAAAAAAP////8AAAMBAAABAAEAAAAAAAAA
                AAAAAP////8AAAMBAAABAAEAAAAAAAAAAAAAAP//AAAAAAsBAAAAAAAAAAAAAAAAAAAAAP//AAAAAAIBAAAAAAAAAAAAAAAAAAAA
                AP//AAAAAAAAAAAAAAAAAAD//wAAAAAAABAAAGAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAN
                4P4AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACgAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAB/AwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAFAAFAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEAAAAA
                AAAAAAAAAAAAAAD/////AAAAAAAAAAAAAAAA/wEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAA
                AAAAAAABAAAAAAAAAAAAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAQAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
                AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAABF
                AAAAAAAAAAAAAA0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAwAAAA4AAAAQAAAAfhBgQU4NAAA7
                AAAAAAAAAAAAAAAbAAAAAA3g/gAAAACgAQAAAQAAAAAAAAB3AgAABgQHAAYEBwB0AQAAAAAAAAAAAAB1AQAAAAAAAAAAAAB2AQAA
                AAAAAAAAAACBAADAAAAAAAAAAACCAADAAAAAAAAAAACDAADAAAAAAAAAAACEAADAAAAAAAAAAAACAQDAAAAAAAAAAADgBgAAAAAA
                AAAAAAACAAAAAQAA4P4AAAAARQAAAAAAAAAAAAAAAAAAAAAAAQEAAAAEAAAAdGVzdAMAAAABAgM=
                """, options: .ignoreUnknownCharacters)!)

    @Test func decodesTheVersion1FixtureAndWritesItBackByteForByte() throws {
        let state = try LiveUpdateState(decoding: Self.version1Fixture)
        #expect(state.machine.vcpus.count == 1)
        let vcpu = try #require(state.machine.vcpus.first)
        #expect(vcpu.registers.rip >= 0x1000 && vcpu.registers.rip < 0x2000, "inside the guest image")
        #expect(vcpu.localAPIC.count == 1024)
        let apicBase = vcpu.msrs.first { $0.index == VCPUState.apicBase }?.value
        #expect(apicBase.map { $0 & 0x400 != 0 } == true, "the guest turned its x2APIC on")
        #expect(vcpu.msrs.contains { $0.index == VCPUState.tsc })
        #expect(state.routes == [.init(msi: (0xFEE0_0000, 0x45), masked: false), .init(msi: nil, masked: true)])
        #expect(state.devices.map(\.name) == ["test"] && state.devices.first?.state == [1, 2, 3])
        #expect(state.encoded(version: 1) == Self.version1Fixture)
        // Version 2 lays the state out alike: only the version word differs.
        var version2 = Self.version1Fixture
        version2[8] = 2
        #expect(state.encoded() == version2)
        #expect(try LiveUpdateState(decoding: version2).encoded() == version2)
    }

    @Test(needsKVM) func kvmTakesTheFixturesVCPUState() throws {
        let state = try LiveUpdateState(decoding: Self.version1Fixture)
        let vm = try TinyVM(.init(cpus: 1, coalescesCommits: false), incoming: try GuestMemory(size: 16 << 20))
        try vm.restoreMachineState(state.machine)
        #expect(try vm.vcpus[0].registers().rip == state.machine.vcpus[0].registers.rip)
    }

    @Test func refusesAVersionItDoesNotKnow() {
        var bytes = Self.version1Fixture
        bytes[8] = 3
        #expect(throws: LiveUpdateState.DecodingError.unsupportedVersion(3)) { try LiveUpdateState(decoding: bytes) }
        bytes[8] = 0
        #expect(throws: LiveUpdateState.DecodingError.unsupportedVersion(0)) { try LiveUpdateState(decoding: bytes) }
    }

    @Test func refusesGarbageCutShortOrTrailingBytes() {
        #expect(throws: LiveUpdateState.DecodingError.notAState) { try LiveUpdateState(decoding: [1, 2, 3]) }
        #expect(throws: LiveUpdateState.DecodingError.notAState) {
            try LiveUpdateState(decoding: Array("GET / HTTP/1.1\r\n".utf8))
        }
        for cut in [12, 20, 100, Self.version1Fixture.count - 1] {
            #expect(throws: LiveUpdateState.DecodingError.self, "cut at \(cut)") {
                try LiveUpdateState(decoding: Array(Self.version1Fixture.prefix(cut)))
            }
        }
        #expect(throws: LiveUpdateState.DecodingError.malformed("1 bytes after the end")) {
            try LiveUpdateState(decoding: Self.version1Fixture + [0])
        }
        var badLength = Self.version1Fixture
        badLength[24] &+= 1  // the first vCPU's regs blob length: no longer struct kvm_regs
        #expect(throws: LiveUpdateState.DecodingError.self) { try LiveUpdateState(decoding: badLength) }
    }
}
#endif
