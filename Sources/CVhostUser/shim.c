// The vhost-user shim's bodies. _GNU_SOURCE is defined here, not in the header:
// a module header that defines it changes glibc's own types (fd_set's field
// names) and clashes with other modules that include the same system headers.
#define _GNU_SOURCE
#include "CVhostUser.h"
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/eventfd.h>

/// sendmsg(2) of `len` bytes with `nfds` descriptors as one SCM_RIGHTS message
/// (none when nfds == 0). Non-blocking, no SIGPIPE: the caller polls.
ssize_t vhost_user_sendmsg(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > VHOST_USER_MAX_FDS) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * VHOST_USER_MAX_FDS)]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/// recvmsg(2) of up to `len` bytes, non-blocking, descriptors close-on-exec.
/// Every descriptor of every SCM_RIGHTS message is collected: the first
/// `maxfds` into `fds`, the rest closed; `*nfds` is the total count received
/// (so a caller sees "too many"), `*truncated` is set when the kernel dropped
/// descriptors that did not fit the control buffer (MSG_CTRUNC).
ssize_t vhost_user_recvmsg(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    // Room for twice the protocol maximum, so an excess is seen, not silently dropped.
    union { char buf[CMSG_SPACE(sizeof(int) * VHOST_USER_MAX_FDS * 2)]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    *nfds = 0;
    *truncated = 0;
    ssize_t got = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (got < 0) return got;
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received = (int *)CMSG_DATA(cmsg);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, &received[i], sizeof fd);
            if (*nfds < maxfds) fds[*nfds] = fd; else close(fd);
            (*nfds)++;
        }
    }
    return got;
}

/// connect(2) to a unix socket path; -1 with ENAMETOOLONG when it does not fit sun_path.
int vhost_user_connect(int sock, const char *path) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address.sun_path) { errno = ENAMETOOLONG; return -1; }
    strcpy(address.sun_path, path);
    return connect(sock, (struct sockaddr *)&address, sizeof address);
}

/// bind(2) to a unix socket path; -1 with ENAMETOOLONG when it does not fit sun_path.
int vhost_user_bind(int sock, const char *path) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address.sun_path) { errno = ENAMETOOLONG; return -1; }
    strcpy(address.sun_path, path);
    return bind(sock, (struct sockaddr *)&address, sizeof address);
}

/// accept4(2) with SOCK_CLOEXEC (Glibc's Swift module does not export accept4).
int vhost_user_accept(int sock) { return accept4(sock, NULL, NULL, SOCK_CLOEXEC); }

/// memfd_create(2) with MFD_CLOEXEC: guest RAM a backend can map.
int vhost_user_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

/// mmap(2) MAP_SHARED read/write; NULL (not MAP_FAILED) on failure, errno set.
void *vhost_user_mmap_shared(int fd, size_t length) {
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}
/// A full memory fence: ring contents are visible before the index that publishes them.
void vhost_user_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/// eventfd(2), non-blocking and close-on-exec: a queue's kick or call descriptor.
int vhost_user_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
