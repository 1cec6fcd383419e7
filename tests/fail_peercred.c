/* fail_peercred.c - preloaded into peerstored by test_cli.sh: makes
 * getsockopt(SO_PEERCRED) fail, as it can on exotic kernels or sockets, so
 * that the test sees what the service does without a client's
 * credentials.  Every other option goes to the real getsockopt. */
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>

int getsockopt(int fd, int level, int name, void *val, socklen_t *len);
int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
  int (*real)(int, int, int, void *, socklen_t *);

  if (level == SOL_SOCKET && name == SO_PEERCRED) {
    errno = ENOPROTOOPT;
    return -1;
  }
  *(void **)&real = dlsym(RTLD_NEXT, "getsockopt");
  return real(fd, level, name, val, len);
}
