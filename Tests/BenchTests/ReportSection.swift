import Bench
import Foundation
import Testing

/// Checks that `report`'s JSON decodes back equal to it and that its section
/// `name` has every key in `keys`; returns the section as plain JSON for
/// the caller's further checks.
func checkedSection(
    _ name: String, of report: BenchReport, keys: [String], sourceLocation: SourceLocation = #_sourceLocation
) throws -> [String: Any] {
    let data = try report.jsonData()
    #expect(try BenchReport.decode(data) == report, sourceLocation: sourceLocation)
    let object = try #require(
        try JSONSerialization.jsonObject(with: data) as? [String: Any], sourceLocation: sourceLocation)
    let section = try #require(object[name] as? [String: Any], sourceLocation: sourceLocation)
    for key in keys { #expect(section[key] != nil, "\(name).\(key)", sourceLocation: sourceLocation) }
    return section
}
