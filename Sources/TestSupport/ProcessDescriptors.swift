#if os(Linux)
import Foundation

/// Open descriptors of this process (entries of /proc/self/fd).
public func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// This process's open descriptors, each as "number -> what it refers to".
/// Leak checks compare sets rather than counts: a descriptor an earlier test
/// releases late lowers a count and would hide a leak of the same size.
public func openDescriptors() -> Set<String> {
    let directory = "/proc/self/fd"
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return Set(
        entries.compactMap { fd in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(fd)")).map { "\(fd) -> \($0)" }
        })
}

/// The descriptors open now that were not open in `before`, after waiting up
/// to `timeout` for them to close (closing can trail the release of an
/// object on another thread by a little).
public func descriptorsLeaked(since before: Set<String>, timeout: Duration = .seconds(5)) -> Set<String> {
    let deadline = ContinuousClock.now + timeout
    while true {
        let leaked = openDescriptors().subtracting(before)
        if leaked.isEmpty || ContinuousClock.now > deadline { return leaked }
        usleep(20_000)
    }
}

/// Threads of this process (entries of /proc/self/task).
public func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

/// Threads of this process whose name (`/proc/self/task/<tid>/comm`) is `name`.
/// Unlike `threadCount()`, it does not move when a thread pool elsewhere in
/// the process grows or shrinks.
public func threadCount(named name: String) -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.filter { task in
        let comm = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)
        return comm?.trimmingCharacters(in: .newlines) == name
    }.count
}
#endif
