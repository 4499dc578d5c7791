import ArgumentParser

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show MSIs delivered through irqfd to a real KVM guest.")
    mutating func run() throws {}
}
