/* harness.h - helpers shared by the cmocka tests: a real peerstored on a
 * temporary socket, and running a loop until a condition or a timeout. */
#ifndef PEERSTORE_TEST_HARNESS_H
#define PEERSTORE_TEST_HARNESS_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct harness_svc {
  pid_t pid;
  char dir[256];
  char socket_path[300];
  char db[320];                /* harness_start_sqlite's database */
  char conninfo[700];          /* harness_start_postgres's -o argument */
  const char *args[32];        /* the extra arguments it started with */
} harness_svc;

/* The command that starts the service: $PEERSTORED (or
 * ../service/peerstored), under valgrind with PEERSTORE_TEST_VALGRIND=1.
 * Fills argv (at most 6 entries); returns how many. */
int harness_service_argv(const char **argv);
/* Starts $PEERSTORED (or ../service/peerstored) on a fresh socket in a
 * fresh temporary directory, with extra arguments (NULL-terminated, may be
 * NULL), and waits until it is listening.  Returns 0 or -1. */
int harness_start(harness_svc *s, const char *const *extra);
/* As harness_start, with the sqlite plugin on a database in the
 * service's directory (s->db), which a restart keeps. */
int harness_start_sqlite(harness_svc *s, const char *const *extra);
/* As harness_start, with the postgres plugin on the database conninfo
 * names (one harness_pg_conninfo gives), which a restart keeps. */
int harness_start_postgres(harness_svc *s, const char *conninfo,
                           const char *const *extra);
/* Starts the service again on the same socket and directory, after
 * harness_kill (so with the sqlite plugin, on the same database). */
int harness_restart(harness_svc *s, const char *const *extra);
/* SIGTERM, wait; returns the exit status, or -1 if it did not exit
 * normally (0 if it was already gone through harness_kill).  Removes the
 * directory. */
int harness_stop(harness_svc *s);
/* Returns 1 if the service process is still running. */
int harness_alive(harness_svc *s);
/* Sends sig and waits for the process; does not remove the directory. */
void harness_kill(harness_svc *s, int sig);

/* Runs loop until *flag becomes non-zero or timeout_ms passes.  Returns 0,
 * or -1 on timeout. */
int harness_run_until(uv_loop_t *loop, const int *flag, unsigned timeout_ms);
/* Runs loop until *counter >= target or timeout_ms passes. */
int harness_run_until_ge(uv_loop_t *loop, const int *counter, int target,
                         unsigned timeout_ms);
/* Runs loop until it has nothing left to do; -1 if that takes longer than
 * timeout_ms. */
int harness_drain(uv_loop_t *loop, unsigned timeout_ms);

struct peerstore_client;
/* The service counter name as client c reads it with peerstore_stats
 * (running loop), or -1 if the service has no such counter or the query
 * failed or took longer than timeout_ms. */
int64_t harness_stat(uv_loop_t *loop, struct peerstore_client *c,
                     const char *name, unsigned timeout_ms);
/* Asks for counter name until it is at least want: a wait on the
 * service's own state, one query after another (no sleeping).  Returns 0,
 * or -1 once timeout_ms have passed. */
int harness_wait_stat(uv_loop_t *loop, struct peerstore_client *c,
                      const char *name, int64_t want, unsigned timeout_ms);

/* A "kB" line of the service's /proc status (VmRSS, VmHWM, ...), or -1. */
long harness_status_kb(const harness_svc *s, const char *field);
/* 1 when the service's memory is its own: not under valgrind, nor built
 * with AddressSanitizer, whose memory is the instrumentation's. */
int harness_memory_measurable(void);
/* The service's resident memory in KiB, or -1. */
long harness_rss_kb(const harness_svc *s);

/* Connects a blocking raw socket to path; returns the fd or -1. */
int harness_raw_connect(const char *path);
/* Reads frames from a raw connection until one of type comes (at most
 * 64 KiB each; others are skipped): copies up to size bytes of its body
 * and returns the body's length, with its request id in *request (may be
 * NULL); -1 on EOF, error, or timeout_ms without a byte. */
long harness_read_frame(int fd, uint16_t type, uint32_t *request,
                        uint8_t *body, size_t size, unsigned timeout_ms);

/* A throwaway PostgreSQL server (tests/pg_cluster.sh, found through
 * $PEERSTORE_PG_CLUSTER): its directory holds the data and the socket. */
typedef struct harness_pg {
  char dir[256];
} harness_pg;
/* Starts one in a fresh directory.  0; 77 when PostgreSQL is not
 * installed (the reason is on stderr: skip); -1 on failure. */
int harness_pg_start(harness_pg *pg);
/* Runs pg_cluster.sh's action ("stop", "kill", "restart", "createdb
 * NAME", "destroy") on it; 0 or -1. */
int harness_pg_ctl(harness_pg *pg, const char *action, const char *arg);
/* The conninfo of database name on it. */
void harness_pg_conninfo(const harness_pg *pg, const char *name, char *out,
                         size_t size);

#endif
