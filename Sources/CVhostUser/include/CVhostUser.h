// Non-variadic wrappers for what Swift cannot call directly: sendmsg/recvmsg
// with SCM_RIGHTS control messages (the CMSG_* macros), unix socket addresses.
// The socket calls forward to CLinuxKVM's, their one implementation; Swift code
// uses IrqFdLinux's UnixSocket. Kept for the embedded backend and C-level tests.
// Declarations only: the bodies (shim.c) need _GNU_SOURCE, which a module
// header must not define.
#ifndef CVHOSTUSER_H
#define CVHOSTUSER_H
#include <stddef.h>
#include <sys/types.h>

/// Most descriptors one vhost-user message may carry (VHOST_MEMORY_BASELINE_NREGIONS).
#define VHOST_USER_MAX_FDS 8

/// sendmsg(2) of `len` bytes with `nfds` descriptors as one SCM_RIGHTS message
/// (none when nfds == 0). Non-blocking, no SIGPIPE: the caller polls.
ssize_t vhost_user_sendmsg(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// recvmsg(2) of up to `len` bytes, non-blocking, descriptors close-on-exec.
/// Every descriptor of every SCM_RIGHTS message is collected: the first
/// `maxfds` into `fds`, the rest closed; `*nfds` is the total count received
/// (so a caller sees "too many"), `*truncated` is set when the kernel dropped
/// descriptors that did not fit the control buffer (MSG_CTRUNC).
ssize_t vhost_user_recvmsg(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated);

/// connect(2) to a unix socket path; -1 with ENAMETOOLONG when it does not fit sun_path
/// (CLinuxKVM's irqfd_unix_connect).
int vhost_user_connect(int sock, const char *path);

/// bind(2) to a unix socket path; -1 with ENAMETOOLONG when it does not fit sun_path
/// (CLinuxKVM's irqfd_unix_bind).
int vhost_user_bind(int sock, const char *path);

/// accept4(2) with SOCK_CLOEXEC (Glibc's Swift module does not export accept4).
int vhost_user_accept(int sock);

/// mmap(2) MAP_SHARED read/write; NULL (not MAP_FAILED) on failure, errno set.
void *vhost_user_mmap_shared(int fd, size_t length);
/// A full memory fence: ring contents are visible before the index that publishes them.
void vhost_user_fence(void);
/// eventfd(2), non-blocking and close-on-exec: a queue's kick or call descriptor.
int vhost_user_eventfd(void);
#endif
