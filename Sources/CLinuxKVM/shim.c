// The bodies that need _GNU_SOURCE (accept4, MSG_CMSG_CLOEXEC, F_ADD_SEALS):
// it is defined here, not in the header, because a module header that defines
// it changes glibc's own types for every module that includes the same
// system headers. Everything else in the header is static inline.
#define _GNU_SOURCE
#include "CLinuxKVM.h"
#include <fcntl.h>

ssize_t irqfd_sendmsg_fds(int sock, const void *buf, size_t len, const int *fds, int nfds, int flags) {
    if (nfds < 0 || nfds > IRQFD_MAX_PASSED_FDS) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * IRQFD_MAX_PASSED_FDS)]; struct cmsghdr align; } control;
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
    return sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
}

ssize_t irqfd_recvmsg_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated, int flags) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    // Room for twice the maximum, so an excess is seen, not silently dropped.
    union { char buf[CMSG_SPACE(sizeof(int) * IRQFD_MAX_PASSED_FDS * 2)]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    *nfds = 0;
    *truncated = 0;
    ssize_t got = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
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

int irqfd_accept_cloexec(int sock) { return accept4(sock, NULL, NULL, SOCK_CLOEXEC); }

int irqfd_add_seals(int fd, unsigned int seals) { return fcntl(fd, F_ADD_SEALS, seals); }

int irqfd_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }
