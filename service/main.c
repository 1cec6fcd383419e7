/* main.c - peerstored: options, the loop, and exit status. */
#include <getopt.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "service.h"

static void usage(FILE *f) {
  fprintf(f,
"Usage: peerstored [OPTION]...\n"
"Serve per-peer records to local programs over a Unix socket.\n"
"\n"
"  -s, --socket PATH        listen on PATH (default: $PEERSTORE_SOCKET, else\n"
"                           $XDG_RUNTIME_DIR/peerstore.sock, else\n"
"                           /run/peerstore/peerstore.sock)\n"
"  -P, --plugin NAME|PATH   storage plugin (default: memory)\n"
"  -D, --plugin-dir DIR     look for plugins in DIR first\n"
"  -d, --database PATH      database file for plugins that need one\n"
"  -c, --config FILE        read settings from an INI file; flags win\n"
"  -m, --socket-mode MODE   octal mode of the socket (default: 0600)\n"
"      --max-value-size N   largest value accepted (default: 1M)\n"
"      --purge-interval S   seconds between purges of expired records (60)\n"
"  -l, --log-level LEVEL    error, warn, info (default) or debug\n"
"  -o, --option NAME=VALUE  any setting of the config file's [peerstored]\n"
"                           section (max_clients, write_timeout, ...);\n"
"                           SECTION.NAME=VALUE: one of another section\n"
"                           (postgres.conninfo=..., plugin.synchronous=...)\n"
"      --ready-fd FD        write \"READY\\n\" to FD once listening\n"
"  -h, --help               show this help\n"
"  -V, --version            show the version\n"
"\n"
"Exit status: 0 after a clean shutdown (SIGINT, SIGTERM), 1 if the service\n"
"could not start (bad options, socket in use, plugin or database error).\n");
}

enum { OPT_MAXVAL = 256, OPT_PURGE, OPT_READY };

/* Flags are kept aside and applied after the config file, by the same
 * rules as its [peerstored] keys. */
typedef struct flag {
  const char *name;
  const char *value;
} flag;

/* Each client is a descriptor: the usual soft limit of 1024 would refuse
 * clients long before max_clients.  Raise it as far as the hard limit
 * allows. */
static void raise_fd_limit(uint32_t max_clients) {
  struct rlimit rl;
  rlim_t want = (rlim_t)max_clients + 64;

  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
    return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want
                    ? want
                    : rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
    LOG_WARN("cannot raise the open file limit to %llu",
             (unsigned long long)want);
}

/* glibc hands freed memory back to the system once 128 KiB lies free at
 * the top of a heap.  A plugin's worker allocates, in its thread's own
 * heap, what a group of jobs carries back to the loop (the records a
 * REPLACE dropped, the pages of an iteration), and the loop frees it:
 * each group shrank the worker's heap and the next faulted it back in a
 * page at a time.  Bursts of 1,000 stores ran at half their speed
 * (bench/README.md, issue 15).  So up to 8 MiB may stay free per heap.
 * Setting a threshold stops glibc from adjusting either of them, so the
 * mmap threshold is set too, above the plugins' 1 MiB batches.  An
 * administrator's own GLIBC_TUNABLES (or MALLOC_*_) wins. */
static void tune_malloc(void) {
#if defined(__GLIBC__) && defined(M_TRIM_THRESHOLD) && defined(M_MMAP_THRESHOLD)
  if (getenv("GLIBC_TUNABLES") != NULL ||
      getenv("MALLOC_TRIM_THRESHOLD_") != NULL ||
      getenv("MALLOC_MMAP_THRESHOLD_") != NULL)
    return;
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 8 << 20);
#endif
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"socket", required_argument, NULL, 's'},
      {"plugin", required_argument, NULL, 'P'},
      {"plugin-dir", required_argument, NULL, 'D'},
      {"database", required_argument, NULL, 'd'},
      {"config", required_argument, NULL, 'c'},
      {"socket-mode", required_argument, NULL, 'm'},
      {"max-value-size", required_argument, NULL, OPT_MAXVAL},
      {"purge-interval", required_argument, NULL, OPT_PURGE},
      {"log-level", required_argument, NULL, 'l'},
      {"ready-fd", required_argument, NULL, OPT_READY},
      {"option", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0}};
  flag flags[32];
  size_t nflags = 0, i;
  const char *config_file = NULL;
  char path[4096], *end;
  config cfg;
  server srv;
  uv_loop_t loop;
  int ch, r;

  while ((ch = getopt_long(argc, argv, "s:P:D:d:c:m:l:o:hV", opts, NULL)) !=
         -1) {
    const char *name = NULL;
    switch (ch) {
    case 's': name = "socket"; break;
    case 'P': name = "plugin"; break;
    case 'D': name = "plugin_dir"; break;
    case 'd': name = "database"; break;
    case 'm': name = "socket_mode"; break;
    case 'l': name = "log_level"; break;
    case OPT_MAXVAL: name = "max_value_size"; break;
    case OPT_PURGE: name = "purge_interval"; break;
    case OPT_READY: name = "ready_fd"; break;
    case 'c': config_file = optarg; break;
    case 'o': name = "="; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("peerstored %s\n", PACKAGE_VERSION); return 0;
    default: usage(stderr); return 1;
    }
    if (name != NULL && nflags < sizeof(flags) / sizeof(flags[0])) {
      flags[nflags].name = name;
      flags[nflags].value = optarg;
      nflags++;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "peerstored: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return 1;
  }

  config_defaults(&cfg);
  if (config_file != NULL && config_load(&cfg, config_file) != 0) {
    config_free(&cfg);
    return 1;
  }
  for (i = 0; i < nflags; i++) {
    if (strcmp(flags[i].name, "=") == 0) {
      /* NAME=VALUE, split in place: optarg points into argv. */
      char *eq = strchr(flags[i].value, '=');
      if (eq != NULL && eq != flags[i].value) {
        /* SECTION.NAME=VALUE: a line of the file's [SECTION]. */
        char *dot = memchr(flags[i].value, '.', (size_t)(eq - flags[i].value));
        *eq = '\0';
        if (dot != NULL && dot != flags[i].value && dot[1] != '\0') {
          *dot = '\0';
          if (config_add(&cfg, flags[i].value, dot + 1, eq + 1) == 0)
            continue;
          *dot = '.';
        } else if (config_set(&cfg, flags[i].value, eq + 1) == 0) {
          continue;
        }
        *eq = '=';
      }
    } else if (strcmp(flags[i].name, "ready_fd") == 0) {
      long fd = strtol(flags[i].value, &end, 10);
      if (*flags[i].value != '\0' && *end == '\0' && fd >= 0 && fd < 65536) {
        cfg.ready_fd = (int)fd;
        continue;
      }
    } else if (config_set(&cfg, flags[i].name, flags[i].value) == 0) {
      continue;
    }
    fprintf(stderr, "peerstored: bad value for --%s: %s\n",
            strcmp(flags[i].name, "=") == 0 ? "option" : flags[i].name,
            flags[i].value);
    config_free(&cfg);
    return 1;
  }
  if (config_finish(&cfg) != 0) {
    config_free(&cfg);
    return 1;
  }
  if (cfg.socket_path == NULL) {
    if (peerstore_default_socket_path(path, sizeof(path)) != 0 ||
        (cfg.socket_path = strdup(path)) == NULL) {
      fprintf(stderr, "peerstored: default socket path too long\n");
      config_free(&cfg);
      return 1;
    }
  }
  log_set_level(cfg.log_level);
  /* A client that vanishes mid-write must not kill the service. */
  signal(SIGPIPE, SIG_IGN);
  raise_fd_limit(cfg.max_clients);
  tune_malloc();

  uv_loop_init(&loop);
  r = server_start(&srv, &loop, &cfg);
  if (r == 0)
    uv_run(&loop, UV_RUN_DEFAULT);
  /* Anything left closing finishes here; then the loop must be empty. */
  uv_run(&loop, UV_RUN_DEFAULT);
  plugin_release(&srv.plugin);
  if (uv_loop_close(&loop) != 0) {
    LOG_ERROR("event loop still has open handles at exit");
    r = -1;
  }
  config_free(&cfg);
  return r == 0 ? 0 : 1;
}
