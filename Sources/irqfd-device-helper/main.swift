// A device in another process, as vhost-user back ends and VFIO are: it is
// handed one MSI-X vector's eventfd over a Unix socket (SCM_RIGHTS) and
// raises that vector by signalling it. The kernel's irqfd then injects the
// interrupt; the VMM process is not on the path.
//
// Usage: irqfd-device-helper --socket PATH
//
// Protocol on the socket: the VMM sends the byte "E" carrying the eventfd and
// the helper answers "R". Then each "s" signals the eventfd once and is
// answered "k"; "q" or end of file ends the helper with status 0.
#if os(Linux)
import Glibc
import IrqFdLinux
import SystemPackage

func fail(_ message: String, status: Int32 = 1) -> Never {
    // write(2) through swift-system's writeAll (EINTR and short writes retried). If even
    // that fails there is nowhere left to report it: the exit status still says it failed.
    _ = try? FileDescriptor.standardError.writeAll(Array("irqfd-device-helper: \(message)\n".utf8))
    exit(status)
}

let arguments = CommandLine.arguments
guard arguments.count == 3, arguments[1] == "--socket" else {
    fail("usage: irqfd-device-helper --socket PATH", status: 2)
}

do {
    let socket = try UnixSocket.connect(to: arguments[2])
    let (hello, descriptor) = try socket.receiveWithDescriptor(maximum: 1)
    guard hello == Array("E".utf8), let descriptor else { fail("expected \"E\" with an eventfd, got \(hello)") }
    let event = EventFD(adopting: descriptor)
    try socket.send(Array("R".utf8))
    while true {
        let command = try socket.receive(maximum: 1)
        switch command.first {
        case UInt8(ascii: "s"):
            event.signal()
            try socket.send(Array("k".utf8))
        case UInt8(ascii: "q"), nil:
            exit(0)
        default:
            fail("unknown command \(command)")
        }
    }
} catch {
    fail("\(error)")
}
#else
print("irqfd-device-helper runs on Linux only")
#endif
