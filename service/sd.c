/* sd.c - what the service says to and takes from systemd: a listening
 * socket passed by socket activation (peerstored.socket), and
 * READY/STOPPING/WATCHDOG notifications (Type=notify).  Through
 * libsystemd when the build has it (PEERSTORE_SYSTEMD); without it the
 * service binds its own socket, and refuses to start if systemd passed it
 * one it cannot take - silently binding the path instead would race the
 * socket unit for it. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "service.h"

#ifdef PEERSTORE_SYSTEMD
#include <systemd/sd-daemon.h>

int sd_listener(int *fd) {
  int n = sd_listen_fds(1); /* 1: the variables are unset for children */

  if (n < 0) {
    LOG_ERROR("socket activation: %s", strerror(-n));
    return -1;
  }
  if (n == 0)
    return 0;
  if (n > 1) {
    LOG_ERROR("socket activation: %d sockets passed; peerstored takes one "
              "(ListenStream= once in peerstored.socket)", n);
    return -1;
  }
  if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) <= 0) {
    LOG_ERROR("socket activation: the socket passed is not a listening "
              "Unix stream socket (ListenStream=/path in peerstored.socket)");
    return -1;
  }
  *fd = SD_LISTEN_FDS_START;
  return 1;
}

void sd_say(const char *state) { sd_notify(0, state); }

uint64_t sd_watchdog_ms(void) {
  uint64_t usec = 0;

  /* 0: unset for children; ping twice per interval, as sd_watchdog_enabled
   * advises. */
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
    return 0;
  return usec / 2000 > 0 ? usec / 2000 : 1;
}

#else /* without libsystemd */

int sd_listener(int *fd) {
  (void)fd;
  if (getenv("LISTEN_FDS") != NULL && getenv("LISTEN_PID") != NULL &&
      strtol(getenv("LISTEN_PID"), NULL, 10) == (long)getpid()) {
    LOG_ERROR("socket activation: systemd passed a socket, but this "
              "peerstored was built without libsystemd (configure found "
              "none); use peerstored.service without peerstored.socket");
    return -1;
  }
  return 0;
}

void sd_say(const char *state) { (void)state; }

uint64_t sd_watchdog_ms(void) { return 0; }

#endif
