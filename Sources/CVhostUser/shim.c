// The vhost-user shim's bodies. _GNU_SOURCE is defined here, not in the header:
// a module header that defines it changes glibc's own types (fd_set's field
// names) and clashes with other modules that include the same system headers.
#define _GNU_SOURCE
#include "CVhostUser.h"
#include "CLinuxKVM.h"
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/eventfd.h>

// The socket calls are CLinuxKVM's (one implementation); these names stay for
// the embedded back-end and the tests that still call them.

ssize_t vhost_user_sendmsg(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    return irqfd_sendmsg_fds(sock, buf, len, fds, nfds, MSG_DONTWAIT);
}

ssize_t vhost_user_recvmsg(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated) {
    return irqfd_recvmsg_fds(sock, buf, len, fds, maxfds, nfds, truncated, MSG_DONTWAIT);
}

int vhost_user_connect(int sock, const char *path) { return irqfd_unix_connect(sock, path); }

int vhost_user_bind(int sock, const char *path) { return irqfd_unix_bind(sock, path); }

int vhost_user_accept(int sock) { return irqfd_accept_cloexec(sock); }

/// mmap(2) MAP_SHARED read/write; NULL (not MAP_FAILED) on failure, errno set.
void *vhost_user_mmap_shared(int fd, size_t length) {
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}
/// A full memory fence: ring contents are visible before the index that publishes them.
void vhost_user_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/// eventfd(2), non-blocking and close-on-exec: a queue's kick or call descriptor.
int vhost_user_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
