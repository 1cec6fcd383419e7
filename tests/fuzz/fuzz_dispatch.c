/* fuzz_dispatch.c - libFuzzer target for the service's input path.
 *
 * A whole peerstored (memory plugin) runs inside the fuzzer process on its
 * own loop.  Each input is written as one client's byte stream to a real
 * connection; the service reads it through its normal path (framing,
 * limits, dispatch, watches, iterations) until it has consumed everything
 * and closed the connection, while this side drains the replies.  Any
 * crash, leak or sanitizer report is a bug in how the service treats what
 * a client sends. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "service.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t loop;
static server srv;
static config cfg;
static char sock_path[108];

static void init_once(void) {
  static int done;

  if (done)
    return;
  done = 1;
  snprintf(sock_path, sizeof(sock_path), "/tmp/peerstore-fuzz-%d.sock",
           (int)getpid());
  config_defaults(&cfg);
  cfg.socket_path = strdup(sock_path);
  cfg.log_level = -1; /* silent */
  /* Small limits, so that inputs reach them. */
  cfg.max_value_size = 4096;
  cfg.output_soft_limit = 64 * 1024;
  cfg.watch_output_limit = 128 * 1024;
  cfg.max_watches = 8;
  log_set_level(cfg.log_level);
  uv_loop_init(&loop);
  if (server_start(&srv, &loop, &cfg) != 0)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct sockaddr_un sa;
  char buf[65536];
  size_t sent = 0;
  int fd, spins;

  init_once();
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
    abort();
  /* Feed, drain and run the service until it has closed the connection
   * (EOF or a protocol error); bounded, since a well-formed watch would
   * otherwise keep it open only until our EOF. */
  for (spins = 0; spins < 100000; spins++) {
    ssize_t r;

    if (sent < size) {
      r = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (r > 0)
        sent += (size_t)r;
      else if (r < 0 && errno != EAGAIN)
        sent = size;
      if (sent == size)
        shutdown(fd, SHUT_WR);
    } else if (size == 0 && spins == 0) {
      shutdown(fd, SHUT_WR);
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    r = recv(fd, buf, sizeof(buf), 0);
    if (r == 0 || (r < 0 && errno != EAGAIN))
      break; /* the service closed us */
  }
  close(fd);
  /* Let the service see the close and free the client. */
  while (srv.n_clients > 0 && spins++ < 200000)
    uv_run(&loop, UV_RUN_NOWAIT);
  return 0;
}
