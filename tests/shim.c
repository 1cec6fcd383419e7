/* shim.c - preloaded into peerstored by test_cli.sh (LD_PRELOAD) to give
 * the service conditions that are hard to produce for real:
 *
 *  PEERSTORE_SHIM_NO_PEERCRED=1  getsockopt(SO_PEERCRED) fails, as it can
 *                                on exotic kernels or sockets;
 *  PEERSTORE_SHIM_SWAP=TARGET    right after a Unix socket is bound, its
 *                                path is replaced by a symlink to TARGET:
 *                                an attacker winning the race between
 *                                bind and chmod.
 *
 * Everything else goes to the real calls. */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int getsockopt(int fd, int level, int name, void *val, socklen_t *len);
int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
  int (*real)(int, int, int, void *, socklen_t *);

  if (level == SOL_SOCKET && name == SO_PEERCRED &&
      getenv("PEERSTORE_SHIM_NO_PEERCRED") != NULL) {
    errno = ENOPROTOOPT;
    return -1;
  }
  *(void **)&real = dlsym(RTLD_NEXT, "getsockopt");
  return real(fd, level, name, val, len);
}

int bind(int fd, const struct sockaddr *sa, socklen_t len);
int bind(int fd, const struct sockaddr *sa, socklen_t len) {
  int (*real)(int, const struct sockaddr *, socklen_t);
  const char *target = getenv("PEERSTORE_SHIM_SWAP");
  int r;

  *(void **)&real = dlsym(RTLD_NEXT, "bind");
  r = real(fd, sa, len);
  if (r == 0 && target != NULL && sa->sa_family == AF_UNIX) {
    const char *path = ((const struct sockaddr_un *)(const void *)sa)->sun_path;

    if (unlink(path) == 0)
      (void)symlink(target, path);
  }
  return r;
}
