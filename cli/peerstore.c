/* cli.c - `peerstore`, the command-line client of peerstored.
 *
 * One command per run, driven by libpeerstore on its own loop, so the tool
 * exercises exactly the API that programs use.  Output is one line per
 * record, or one JSON object per line with --json; exit codes are listed
 * in usage() and the man page and are meant for shell scripts.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_SQLITE
#include <sqlite3.h>
#endif

#include "peerstore.h"
#include "text.h"
#include "prometheus.h"

enum {
  EXIT_OK = 0,
  EXIT_NOTFOUND = 1,
  EXIT_USAGE = 2,
  EXIT_CONNECT = 3,
  EXIT_REFUSED = 4,
  EXIT_TIMEOUT = 5,
  EXIT_CONFLICT = 6,
  EXIT_OUTPUT = 7
};

static void usage(FILE *f) {
  fprintf(f,
"Usage: peerstore [OPTION]... COMMAND [VALUE]\n"
"Store and read per-peer records in peerstored.\n"
"\n"
"Commands:\n"
"  store    store VALUE (or --hex/--file/stdin with -) under -s -p -k\n"
"  get      print the values under -s -p -k, oldest first\n"
"  iterate  list the records of -s, filtered by -p and/or -k\n"
"  watch    print changes to matching records as they happen: the event,\n"
"           its revision, the record (until ^C or --count)\n"
"  remove   remove the records of -s matching -p and/or -k\n"
"  stats    print the service's counters\n"
"  peer     print a peer id (-p) in base32 and hex\n"
"  batch    apply the operations of JSON lines (stdin, or --file) all or\n"
"           nothing; print the revision its changes began at\n"
"  export   every record of each -s (one or more; -p, -k filter) as JSON\n"
"           lines, as iterate --json writes them\n"
"  import   store the records of export's JSON lines (stdin, or --file)\n"
"           in atomic batches of 1,000; expired ones are skipped and\n"
"           counted\n"
"  backup   write a consistent copy of the service's store (SQLite) to\n"
"           FILE, which is replaced only once the copy is whole and\n"
"           synced; - writes it to standard output\n"
"\n"
"Options:\n"
"  -s, --subsystem NAME   subsystem (required but for stats, peer, batch\n"
"                         and import; export takes several)\n"
"  -p, --peer ID          peer id: 52 base32 characters or 64 hex digits\n"
"  -k, --key KEY          key\n"
"  -x, --hex              VALUE is hex; get prints values as hex\n"
"  -f, --file FILE        read the value from FILE\n"
"  -r, --replace          store replaces all values under the key\n"
"  -e, --expiry WHEN      never (default), a relative time (90s, 15m, 1h,\n"
"                         7d), @UNIXSECONDS, or microseconds since epoch\n"
"  -n, --count N          watch: exit after N events\n"
"      --snapshot         watch: the current records first, then \"sync\"\n"
"      --removals         watch: removals and expiries too\n"
"      --from REV         watch: resume after revision REV\n"
"      --prometheus       stats: in the Prometheus text format (for\n"
"                         node_exporter's textfile collector)\n"
"  -j, --json             one JSON object per line\n"
"  -S, --socket PATH      service socket (default: $PEERSTORE_SOCKET, else\n"
"                         $XDG_RUNTIME_DIR/peerstore.sock, else\n"
"                         /run/peerstore/peerstore.sock)\n"
"  -t, --timeout SEC      give up after SEC seconds (default 10; 0: never;\n"
"                         export, import, backup: without progress, and\n"
"                         backup has none unless given)\n"
"  -h, --help             show this help\n"
"\n"
"Exit status: 0 ok; 1 get found nothing; 2 usage error; 3 cannot reach\n"
"the service or lost it; 4 the service refused the request (the reason is\n"
"printed); 5 timed out; 6 a condition of the batch did not hold;\n"
"7 the output could not be written (a reader that went away is 0);\n"
"130 interrupted (watch: 0).\n");
}

typedef struct cli {
  uv_loop_t loop;
  uv_timer_t timer;
  uv_signal_t sigint;
  uv_signal_t sigterm; /* backup: its temporary goes on these too */
  uv_signal_t sighup;
  peerstore_client *client;
  const char *command;
  const char *subsystem;
  const char *key;
  peerstore_peer_id peer;
  int have_peer;
  int hex;
  int json;
  int prometheus; /* stats in the Prometheus text format */
  int replace;
  uint64_t expiry;
  uint64_t count_limit;
  uint64_t seen;
  peerstore_watch_opts wopts;
  uint8_t *value;
  size_t value_size;
  const char *batch_file;
  int exit_code;
  int write_errno; /* why stdout failed, when it did */
  /* export: the subsystems, one after another */
  const char *subsystems[16];
  int n_subsystems, next_subsystem;
  /* import: the input, read a batch at a time */
  FILE *in;
  void *json_db, *json_st; /* sqlite3 *, sqlite3_stmt * */
  uint64_t lineno, imported, expired, batches, pending;
  uint64_t timeout_ms; /* export, import: without progress for this long */
  /* backup: where the copy goes, written under a temporary name */
  const char *backup_file;
  char *backup_tmp; /* NULL once renamed or removed, or for stdout */
  int backup_fd;
  uint64_t backup_bytes;
  peerstore_backup_op *backup_op; /* until its done callback */
} cli;

/* ------------------------------------------------------------------ */
/* Parsing                                                             */

static int parse_hex(const char *s, uint8_t **out, size_t *n) {
  size_t len = strlen(s);
  uint8_t *b;

  if (len % 2 != 0)
    return -1;
  if ((b = malloc(len / 2 + 1)) == NULL)
    return -1;
  if (peerstore__hex_decode(s, b, len / 2) != 0) {
    free(b);
    return -1;
  }
  *out = b;
  *n = len / 2;
  return 0;
}

/* Reads a whole value: up to PEERSTORE_VALUE_MAX_HARD bytes, the most any
 * service takes; a longer stream fails with EFBIG. */
static int read_stream(FILE *f, uint8_t **out, size_t *n) {
  size_t cap = 4096, len = 0, r;
  uint8_t *b = malloc(cap), *nb;

  if (b == NULL)
    return -1;
  while ((r = fread(b + len, 1, cap - len, f)) > 0) {
    len += r;
    if (len < cap)
      continue;
    /* Room for one byte past the limit tells a value at the limit from
     * one over it. */
    if (cap > PEERSTORE_VALUE_MAX_HARD) {
      free(b);
      errno = EFBIG;
      return -1;
    }
    cap = cap * 2 > PEERSTORE_VALUE_MAX_HARD ? PEERSTORE_VALUE_MAX_HARD + 1
                                            : cap * 2;
    if ((nb = realloc(b, cap)) == NULL) {
      free(b);
      return -1;
    }
    b = nb;
  }
  if (ferror(f)) {
    free(b);
    return -1;
  }
  *out = b;
  *n = len;
  return 0;
}

/* never | N[s|m|h|d] relative | @SECONDS | MICROSECONDS absolute */
static int parse_expiry(const char *s, uint64_t *out) {
  char *end;
  unsigned long long v;
  uint64_t mult = 0;

  if (strcmp(s, "never") == 0) {
    *out = PEERSTORE_EXPIRY_NEVER;
    return 0;
  }
  errno = 0;
  if (*s == '@') {
    v = strtoull(s + 1, &end, 10);
    if (errno || end == s + 1 || *end || v > UINT64_MAX / 1000000u)
      return -1;
    *out = v * 1000000u;
    return 0;
  }
  if (!isdigit((unsigned char)*s))
    return -1;
  v = strtoull(s, &end, 10);
  if (errno)
    return -1;
  if (*end == '\0') {
    *out = v;
    return 0;
  }
  if (end[1] != '\0')
    return -1;
  switch (*end) {
  case 's': mult = 1000000ull; break;
  case 'm': mult = 60ull * 1000000u; break;
  case 'h': mult = 3600ull * 1000000u; break;
  case 'd': mult = 86400ull * 1000000u; break;
  default: return -1;
  }
  if (v > (UINT64_MAX - peerstore__now_us()) / mult)
    return -1;
  *out = peerstore__now_us() + v * mult;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Output                                                              */

static void json_str(FILE *f, const char *s, size_t n) {
  size_t i;

  fputc('"', f);
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20 || ch == 0x7f)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

static void print_hex(FILE *f, const void *p, size_t n) {
  const uint8_t *b = p;
  size_t i;

  for (i = 0; i < n; i++)
    fprintf(f, "%02x", b[i]);
}

/* A value prints as text when it is all printable ASCII or UTF-8 bytes. */
/* 1 if p[0..n) is well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF), which is what a JSON string may
 * hold. */
static int utf8_valid(const uint8_t *p, size_t n) {
  size_t i = 0;

  while (i < n) {
    uint8_t c = p[i];
    size_t len, k;
    uint32_t cp;

    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (n - i < len)
      return 0;
    for (k = 1; k < len; k++) {
      if ((p[i + k] & 0xc0) != 0x80)
        return 0;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
      return 0;
    i += len;
  }
  return 1;
}

/* Printable as it is: UTF-8 without control characters. */
static int is_text(const uint8_t *v, size_t n) {
  size_t i;

  for (i = 0; i < n; i++)
    if (v[i] < 0x20 || v[i] == 0x7f)
      return 0;
  return utf8_valid(v, n);
}

/* A JSON member "name": string when s is UTF-8, else "name_hex": hex. */
static void json_text_or_hex(const char *name, const void *s, size_t n,
                             int comma) {
  printf("%s\"%s%s\":", comma ? "," : "", name,
         utf8_valid(s, n) ? "" : "_hex");
  if (utf8_valid(s, n)) {
    json_str(stdout, s, n);
  } else {
    putchar('"');
    print_hex(stdout, s, n);
    putchar('"');
  }
}

static const char *const event_names[] = {"?",      "store", "remove",
                                          "expire", "sync",  "reset"};

/* Prints a record; for watch, ev is the event it came with (its kind and
 * revision lead the line; a removal's record keeps the revision of the
 * store that wrote it, as record_revision). */
static void print_record(cli *c, const peerstore_record *r,
                         const peerstore_event *ev) {
  char peer[PEERSTORE_PEER_B32_LEN + 1];

  peerstore_peer_to_string(&r->peer, peer);
  if (c->json) {
    /* Every line is valid JSON: strings that are not UTF-8 come as
     * hex only (subsystem_hex, key_hex); value_hex is always there. */
    putchar('{');
    if (ev != NULL)
      printf("\"event\":\"%s\",", event_names[ev->kind]);
    json_text_or_hex("subsystem", r->subsystem, strlen(r->subsystem), 0);
    printf(",\"peer\":\"%s\",\"peer_hex\":\"", peer);
    print_hex(stdout, r->peer.bytes, sizeof(r->peer.bytes));
    putchar('"');
    json_text_or_hex("key", r->key, strlen(r->key), 1);
    if (utf8_valid(r->value, r->value_size)) {
      printf(",\"value\":");
      json_str(stdout, r->value, r->value_size);
    }
    printf(",\"value_hex\":\"");
    print_hex(stdout, r->value, r->value_size);
    printf("\",\"size\":%zu,\"expiry\":", r->value_size);
    if (r->expiry == PEERSTORE_EXPIRY_NEVER)
      printf("null");
    else
      printf("%" PRIu64, r->expiry);
    printf(",\"revision\":%" PRIu64, ev != NULL ? ev->revision : r->revision);
    if (ev != NULL && ev->revision != r->revision)
      printf(",\"record_revision\":%" PRIu64, r->revision);
    if (peerstore_record_writer(r) == PEERSTORE_WRITER_UNKNOWN)
      printf(",\"writer\":null}\n");
    else
      printf(",\"writer\":%" PRIu32 "}\n", peerstore_record_writer(r));
  } else if (strcmp(c->command, "get") == 0) {
    if (c->hex)
      print_hex(stdout, r->value, r->value_size);
    else
      fwrite(r->value, 1, r->value_size, stdout);
    putchar('\n');
  } else {
    if (ev != NULL)
      printf("%s\t%" PRIu64 "\t", event_names[ev->kind], ev->revision);
    printf("%s\t%s\t", peer, r->key);
    if (!c->hex && is_text(r->value, r->value_size))
      fwrite(r->value, 1, r->value_size, stdout);
    else {
      printf("0x");
      print_hex(stdout, r->value, r->value_size);
    }
    if (r->expiry == PEERSTORE_EXPIRY_NEVER)
      printf("\tnever");
    else
      printf("\t%" PRIu64, r->expiry);
    printf("\t%" PRIu64, r->revision);
    if (peerstore_record_writer(r) == PEERSTORE_WRITER_UNKNOWN)
      printf("\t-\n");
    else
      printf("\t%" PRIu32 "\n", peerstore_record_writer(r));
  }
  fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* Completion                                                          */

static void on_closed(uv_handle_t *h) { (void)h; }

static void finish(cli *c, int code) {
  /* Whatever command wrote, it is all out, or the exit says it is not:
   * a full disk under `stats --prometheus >file && mv` must not pass for
   * success.  A reader that went away (EPIPE) is how `| head` ends. */
  if (code == EXIT_OK) {
    int e = 0;
    if (fflush(stdout) != 0)
      e = errno;
    else if (ferror(stdout))
      e = c->write_errno != 0 ? c->write_errno : EIO;
    if (e != 0 && e != EPIPE) {
      fprintf(stderr, "peerstore: %s: cannot write the output: %s\n",
              c->command, strerror(e));
      code = EXIT_OUTPUT;
    }
  }
  c->exit_code = code;
  if (c->client != NULL) {
    peerstore_disconnect(c->client, 0);
    c->client = NULL;
  }
  if (!uv_is_closing((uv_handle_t *)&c->timer)) {
    uv_close((uv_handle_t *)&c->timer, on_closed);
    uv_close((uv_handle_t *)&c->sigint, on_closed);
    uv_close((uv_handle_t *)&c->sigterm, on_closed);
    uv_close((uv_handle_t *)&c->sighup, on_closed);
  }
}

static int status_exit(int status) {
  switch (status) {
  case 0:
    return EXIT_OK;
  case PEERSTORE_ETIMEDOUT:
    return EXIT_TIMEOUT;
  case PEERSTORE_ECONNREFUSED:
  case PEERSTORE_ENOENT:
  case PEERSTORE_ECONNRESET:
  case PEERSTORE_EPIPE:
  case PEERSTORE_ENOTCONN:
  case PEERSTORE_ESHUTDOWN:
    return EXIT_CONNECT;
  case PEERSTORE_ECONFLICT:
    return EXIT_CONFLICT;
  default:
    return EXIT_REFUSED;
  }
}

static void fail(cli *c, int status) {
  fprintf(stderr, "peerstore: %s: %s (%s)\n", c->command,
          peerstore_strerror(status), peerstore_err_name(status));
  finish(c, status_exit(status));
}

static void on_store(void *arg, int status) {
  cli *c = arg;

  if (status != 0) {
    fail(c, status);
    return;
  }
  if (c->json)
    printf("{\"stored\":true}\n");
  finish(c, EXIT_OK);
}

/* The reader went away (SIGPIPE is ignored by libpeerstore), or the
 * count is reached: 1 when the command is done. */
static int printed(cli *c) {
  if (ferror(stdout)) {
    c->write_errno = errno;
    finish(c, EXIT_OK);
    return 1;
  }
  c->seen++;
  if (c->count_limit > 0 && c->seen >= c->count_limit) {
    finish(c, EXIT_OK);
    return 1;
  }
  return 0;
}

static void on_event(void *arg, const peerstore_event *ev, int status) {
  cli *c = arg;

  if (ev == NULL) {
    fail(c, status);
    return;
  }
  if (ev->rec != NULL) {
    print_record(c, ev->rec, ev);
    printed(c);
    return;
  }
  /* SYNC and RESET carry no record. */
  if (c->json && ev->kind == PEERSTORE_EVENT_SYNC)
    printf("{\"event\":\"sync\",\"revision\":%" PRIu64 "}\n", ev->revision);
  else if (c->json)
    printf("{\"event\":\"%s\"}\n", event_names[ev->kind]);
  else if (ev->kind == PEERSTORE_EVENT_SYNC)
    printf("sync\t%" PRIu64 "\n", ev->revision);
  else
    printf("%s\n", event_names[ev->kind]);
  fflush(stdout);
  if (ferror(stdout))
    finish(c, EXIT_OK);
}

static void on_record(void *arg, const peerstore_record *rec, int status) {
  cli *c = arg;

  if (rec != NULL) {
    print_record(c, rec, NULL);
    printed(c);
    return;
  }
  if (status != 0) {
    fail(c, status);
    return;
  }
  finish(c, (strcmp(c->command, "get") == 0 && c->seen == 0) ? EXIT_NOTFOUND
                                                             : EXIT_OK);
}

static void on_remove(void *arg, int status, uint64_t removed) {
  cli *c = arg;

  if (status != 0) {
    fail(c, status);
    return;
  }
  if (c->json)
    printf("{\"removed\":%" PRIu64 "}\n", removed);
  else
    printf("%" PRIu64 "\n", removed);
  finish(c, EXIT_OK);
}

static void on_stats(void *arg, int status, const peerstore_stat *st,
                     size_t n) {
  cli *c = arg;
  size_t i;

  if (status != 0) {
    fail(c, status);
    return;
  }
  if (c->prometheus) {
    prometheus_write(stdout, st, n);
  } else if (c->json) {
    printf("{");
    for (i = 0; i < n; i++)
      printf("%s\"%s\":%" PRIu64, i ? "," : "", st[i].name, st[i].value);
    printf("}\n");
  } else {
    for (i = 0; i < n; i++)
      printf("%s\t%" PRIu64 "\n", st[i].name, st[i].value);
  }
  finish(c, EXIT_OK);
}

static void on_timeout(uv_timer_t *t) {
  cli *c = t->data;

  fprintf(stderr, "peerstore: %s: no answer from the service in time\n",
          c->command);
  finish(c, EXIT_TIMEOUT);
}

/* export, import: the timeout counts from the last progress. */
static void restart_timer(cli *c) {
  if (c->timeout_ms > 0 && !uv_is_closing((uv_handle_t *)&c->timer))
    uv_timer_start(&c->timer, on_timeout, c->timeout_ms, 0);
}

static void on_sigint(uv_signal_t *s, int signum) {
  cli *c = s->data;

  finish(c, strcmp(c->command, "watch") == 0 && signum == SIGINT
                ? EXIT_OK
                : 128 + signum);
}

/* ------------------------------------------------------------------ */
/* batch: JSON lines in, one batch out                                 */

static void on_batch(void *arg, int status, uint64_t first) {
  cli *c = arg;

  if (status != 0) {
    fail(c, status);
    return;
  }
  if (c->json)
    printf("{\"applied\":%" PRIu64 ",\"first_revision\":%" PRIu64 "}\n",
           c->seen, first);
  else
    printf("%" PRIu64 "\n", first);
  finish(c, EXIT_OK);
}

#ifdef HAVE_SQLITE
/* Each line is one object:
 *   {"op":"store", "subsystem", "peer", "key", "value" | "value_hex",
 *    "expiry" (null, microseconds, or a string as -e takes), "replace"}
 *   {"op":"remove", "subsystem", ["peer"], ["key"]}
 *   {"op":"require", "subsystem", "peer", "key", "revision"}
 * "subsystem_hex", "key_hex" and "peer_hex" may stand for their text
 * forms, as `iterate --json` writes them.  SQLite's JSON functions parse
 * the lines: a JSON parser already in the program, and a well-tested one.
 */
enum {
  J_OP = 1, J_SS, J_SS_HEX, J_PEER, J_PEER_HEX, J_KEY, J_KEY_HEX, J_VALUE,
  J_VALUE_HEX, J_EXPIRY, J_EXPIRY_TYPE, J_REPLACE, J_REVISION, J_REV_TYPE
};
static const char json_sql[] =
    "SELECT json_valid(?1) AND json_type(?1) = 'object', "
    "json_extract(?1, '$.op'), json_extract(?1, '$.subsystem'), "
    "json_extract(?1, '$.subsystem_hex'), json_extract(?1, '$.peer'), "
    "json_extract(?1, '$.peer_hex'), json_extract(?1, '$.key'), "
    "json_extract(?1, '$.key_hex'), json_extract(?1, '$.value'), "
    "json_extract(?1, '$.value_hex'), json_extract(?1, '$.expiry'), "
    "json_type(?1, '$.expiry'), json_extract(?1, '$.replace'), "
    "json_extract(?1, '$.revision'), json_type(?1, '$.revision')";

/* A string field, or its _hex twin, as a NUL-terminated string in buf;
 * NULL when neither is there.  *bad is set for bad hex, or a NUL inside
 * unless binary (a peer id's bytes may hold any). */
static const char *json_string(sqlite3_stmt *st, int col, int hex_col,
                               char *buf, size_t size, int binary,
                               int *bad) {
  const char *s;
  size_t n;

  if (sqlite3_column_type(st, col) == SQLITE_TEXT) {
    s = (const char *)sqlite3_column_text(st, col);
    n = (size_t)sqlite3_column_bytes(st, col);
    if (strlen(s) != n || n >= size) {
      *bad = 1;
      return NULL;
    }
    memcpy(buf, s, n + 1);
    return buf;
  }
  if (hex_col == 0 || sqlite3_column_type(st, hex_col) != SQLITE_TEXT)
    return NULL;
  s = (const char *)sqlite3_column_text(st, hex_col);
  n = strlen(s);
  if (n % 2 != 0 || n / 2 >= size ||
      peerstore__hex_decode(s, (uint8_t *)buf, n / 2) != 0 ||
      (!binary && memchr(buf, 0, n / 2) != NULL)) {
    *bad = 1;
    return NULL;
  }
  buf[n / 2] = '\0';
  return buf;
}

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Adds the operation of one parsed line to b; NULL, or what is wrong.
 * For import (records, as export writes them): no "op" means a store,
 * any other is refused, and a record already expired is left out, with
 * *expired set. */
static const char *batch_line(peerstore_batch *b, sqlite3_stmt *st,
                              int import, int *expired, size_t *bytes) {
  static char ss[PEERSTORE_SUBSYSTEM_MAX + 2], key[PEERSTORE_KEY_MAX + 2],
      ptxt[PEERSTORE_PEER_HEX_LEN + 2];
  const char *op, *s, *k, *p, *why = NULL;
  peerstore_peer_id peer;
  uint8_t *value = NULL;
  size_t size = 0;
  uint64_t expiry = PEERSTORE_EXPIRY_NEVER;
  int bad = 0, r;

  if (sqlite3_column_int(st, 0) != 1)
    return "not a JSON object";
  op = (const char *)sqlite3_column_text(st, J_OP);
  s = json_string(st, J_SS, J_SS_HEX, ss, sizeof(ss), 0, &bad);
  k = json_string(st, J_KEY, J_KEY_HEX, key, sizeof(key), 0, &bad);
  p = json_string(st, J_PEER, J_PEER_HEX, ptxt, sizeof(ptxt), 1, &bad);
  if (bad)
    return "a subsystem, key or peer that is too long, holds a NUL, or is "
           "bad hex";
  if (import && op != NULL && strcmp(op, "store") != 0)
    return "import takes records (the lines export writes), not other "
           "operations";
  if (import)
    op = "store";
  if (op == NULL)
    return "no \"op\"";
  if (s == NULL)
    return "no \"subsystem\"";
  if (p != NULL && sqlite3_column_type(st, J_PEER) == SQLITE_TEXT &&
      peerstore_peer_from_string(p, &peer) != 0)
    return "bad \"peer\" (52 base32 characters or 64 hex digits)";
  if (p != NULL && sqlite3_column_type(st, J_PEER) != SQLITE_TEXT) {
    if (sqlite3_column_bytes(st, J_PEER_HEX) != 2 * (int)sizeof(peer.bytes))
      return "bad \"peer_hex\"";
    memcpy(peer.bytes, p, sizeof(peer.bytes));
  }
  if (strcmp(op, "remove") == 0) {
    r = peerstore_batch_remove(b, s, p != NULL ? &peer : NULL, k);
  } else if (strcmp(op, "require") == 0) {
    if (p == NULL || k == NULL)
      return "require needs \"peer\" and \"key\"";
    if (strcmp((const char *)sqlite3_column_text(st, J_REV_TYPE) ?: "",
               "integer") != 0 ||
        sqlite3_column_int64(st, J_REVISION) < 0)
      return "require needs \"revision\": a whole number (0: no record)";
    r = peerstore_batch_require(b, s, &peer, k,
                                (uint64_t)sqlite3_column_int64(st, J_REVISION));
  } else if (strcmp(op, "store") == 0) {
    const char *et = (const char *)sqlite3_column_text(st, J_EXPIRY_TYPE);

    if (p == NULL || k == NULL)
      return "store needs \"peer\" and \"key\"";
    if (et == NULL || strcmp(et, "null") == 0)
      expiry = PEERSTORE_EXPIRY_NEVER;
    else if (strcmp(et, "integer") == 0 &&
             sqlite3_column_int64(st, J_EXPIRY) >= 0)
      expiry = (uint64_t)sqlite3_column_int64(st, J_EXPIRY);
    else if (strcmp(et, "text") != 0 ||
             parse_expiry((const char *)sqlite3_column_text(st, J_EXPIRY),
                          &expiry) != 0)
      return "bad \"expiry\" (null, microseconds, or as -e takes it)";
    if (import && expiry != PEERSTORE_EXPIRY_NEVER && expiry <= now_us()) {
      *expired = 1;
      return NULL;
    }
    /* value_hex first: exact whatever the bytes (export writes both,
     * and JSON text cannot carry every value through SQLite's parser: a
     * \u0000 ends it). */
    if (sqlite3_column_type(st, J_VALUE_HEX) == SQLITE_TEXT) {
      if (parse_hex((const char *)sqlite3_column_text(st, J_VALUE_HEX),
                    &value, &size) != 0)
        return "bad \"value_hex\"";
    } else if (sqlite3_column_type(st, J_VALUE) == SQLITE_TEXT) {
      size = (size_t)sqlite3_column_bytes(st, J_VALUE);
      value = (uint8_t *)sqlite3_column_text(st, J_VALUE);
    } else {
      return "store needs \"value\" or \"value_hex\"";
    }
    *bytes += size + strlen(s) + strlen(k) + 64;
    r = peerstore_batch_store(b, s, &peer, k, value, size, expiry,
                              sqlite3_column_int(st, J_REPLACE)
                                  ? PEERSTORE_REPLACE
                                  : PEERSTORE_MULTIPLE);
    if (sqlite3_column_type(st, J_VALUE_HEX) == SQLITE_TEXT)
      free(value);
  } else {
    return "\"op\" is none of store, remove, require";
  }
  if (r == PEERSTORE_EINVAL)
    why = "invalid (an empty subsystem or key, or one over its limit)";
  else if (r != 0)
    why = peerstore_strerror(r);
  return why;
}

/* The JSON reader: SQLite in memory, one prepared statement. */
static int json_open(cli *c) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;

  if (sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE, NULL) !=
          SQLITE_OK ||
      sqlite3_prepare_v2(db, json_sql, -1, &st, NULL) != SQLITE_OK) {
    fprintf(stderr, "peerstore: %s: SQLite cannot parse JSON here: %s\n",
            c->command, sqlite3_errmsg(db));
    sqlite3_close(db);
    return -1;
  }
  c->json_db = db;
  c->json_st = st;
  return 0;
}

static void json_close(cli *c) {
  sqlite3_finalize(c->json_st);
  sqlite3_close(c->json_db);
  c->json_db = c->json_st = NULL;
}

/* Adds the lines of c->in to b, up to max operations and about max_bytes
 * of stores (0: no limit); returns how many it added, or -1 after saying
 * which line is wrong. */
static long read_lines(cli *c, peerstore_batch *b, uint64_t max,
                       size_t max_bytes, int import) {
  sqlite3_stmt *st = c->json_st;
  static char *line;
  static size_t cap;
  ssize_t n;
  long added = 0;
  size_t bytes = 0;
  const char *why = NULL;

  while (why == NULL && (max == 0 || (uint64_t)added < max) &&
         (max_bytes == 0 || bytes < max_bytes) &&
         (n = getline(&line, &cap, c->in)) >= 0) {
    int expired = 0;
    c->lineno++;
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      line[--n] = '\0';
    if (strspn(line, " \t") == (size_t)n)
      continue; /* blank */
    sqlite3_bind_text(st, 1, line, (int)n, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW)
      why = sqlite3_errmsg(c->json_db);
    else
      why = batch_line(b, st, import, &expired, &bytes);
    if (why == NULL && expired)
      c->expired++;
    else if (why == NULL)
      added++;
    sqlite3_reset(st);
  }
  if (why == NULL && ferror(c->in))
    why = strerror(errno);
  if (why != NULL)
    fprintf(stderr, "peerstore: %s: line %" PRIu64 ": %s\n", c->command,
            c->lineno, why);
  if (why != NULL || feof(c->in)) {
    free(line);
    line = NULL;
    cap = 0;
  }
  return why != NULL ? -1 : added;
}

/* Reads every line before sending anything: a batch with a bad line is
 * not sent at all. */
static int batch_read(cli *c, peerstore_batch *b) {
  long n;

  if (json_open(c) != 0)
    return -1;
  n = read_lines(c, b, 0, 0, 0);
  json_close(c);
  if (n < 0)
    return -1;
  c->seen = (uint64_t)n;
  return 0;
}

/* import: a batch at a time, the next read once the last is applied, so
 * the input is read no faster than the service applies it.  A batch is
 * 1,000 records or 1 MiB of them, whichever comes first: well within a
 * service's default batch_max_bytes (4 MiB) whatever the values. */
enum { IMPORT_BATCH = 1000, IMPORT_BATCH_BYTES = 1 << 20 };

static int import_next(cli *c);

static void import_done(cli *c, int code) {
  json_close(c);
  if (c->in != stdin)
    fclose(c->in);
  c->in = NULL;
  if (c->json)
    printf("{\"imported\":%" PRIu64 ",\"expired\":%" PRIu64
           ",\"batches\":%" PRIu64 "}\n",
           c->imported, c->expired, c->batches);
  else
    printf("imported %" PRIu64 " records in %" PRIu64 " batches; skipped %"
           PRIu64 " expired\n",
           c->imported, c->batches, c->expired);
  finish(c, code);
}

static void on_import_batch(void *arg, int status, uint64_t first) {
  cli *c = arg;

  (void)first;
  if (status != 0) {
    fprintf(stderr, "peerstore: import: the batch ending at line %" PRIu64
            " was not applied (%s); the %" PRIu64 " records before it were\n",
            c->lineno, peerstore_strerror(status), c->imported);
    import_done(c, status_exit(status));
    return;
  }
  c->imported += c->pending;
  c->batches++;
  if (import_next(c) != 0)
    import_done(c, EXIT_USAGE);
}

/* 0: a batch sent, or the input is done (and said so); -1: bad input. */
static int import_next(cli *c) {
  peerstore_batch *b = peerstore_batch_new(c->client);
  long n;

  if (b == NULL)
    return -1;
  n = read_lines(c, b, IMPORT_BATCH, IMPORT_BATCH_BYTES, 1);
  /* Waiting for input is not the service's time. */
  uv_update_time(&c->loop);
  restart_timer(c);
  if (n < 0) {
    peerstore_batch_discard(b);
    return -1;
  }
  if (n == 0) {
    peerstore_batch_discard(b);
    import_done(c, EXIT_OK);
    return 0;
  }
  c->pending = (uint64_t)n;
  return peerstore_batch_commit(b, on_import_batch, c) != NULL ? 0 : -1;
}

static int import_start(cli *c) {
  c->in = stdin;
  if (c->batch_file != NULL && (c->in = fopen(c->batch_file, "r")) == NULL) {
    fprintf(stderr, "peerstore: import: cannot read %s: %s\n",
            c->batch_file, strerror(errno));
    return -1;
  }
  if (json_open(c) != 0 || import_next(c) != 0) {
    if (c->json_db != NULL)
      json_close(c);
    if (c->in != stdin)
      fclose(c->in);
    c->in = NULL;
    return -1;
  }
  return 0;
}
#endif

static int batch_start(cli *c) {
#ifdef HAVE_SQLITE
  peerstore_batch *b = peerstore_batch_new(c->client);
  FILE *in = stdin;

  if (b == NULL)
    return -1;
  if (c->batch_file != NULL && (in = fopen(c->batch_file, "r")) == NULL) {
    fprintf(stderr, "peerstore: batch: cannot read %s: %s\n", c->batch_file,
            strerror(errno));
    peerstore_batch_discard(b);
    return -1;
  }
  c->in = in;
  if (batch_read(c, b) != 0) {
    peerstore_batch_discard(b);
    if (in != stdin)
      fclose(in);
    c->in = NULL;
    return -1;
  }
  if (in != stdin)
    fclose(in);
  c->in = NULL;
  return peerstore_batch_commit(b, on_batch, c) != NULL ? 0 : -1;
#else
  (void)c;
  fprintf(stderr, "peerstore: batch: built without SQLite, which reads "
                  "its JSON\n");
  return -1;
#endif
}

/* ------------------------------------------------------------------ */
/* export: iterate --json over each subsystem in turn                  */

static int export_next(cli *c);

static void on_export_record(void *arg, const peerstore_record *rec,
                             int status) {
  cli *c = arg;

  if (rec != NULL) {
    print_record(c, rec, NULL);
    /* A long export is slow, not stuck, while records come. */
    if (!printed(c) && (c->seen & 1023) == 0)
      restart_timer(c);
    return;
  }
  if (status != 0) {
    fail(c, status);
    return;
  }
  if (export_next(c) != 0)
    fail(c, PEERSTORE_ENOMEM);
}

static int export_next(cli *c) {
  const char *ss;

  if (c->next_subsystem == c->n_subsystems) {
    fflush(stdout);
    finish(c, EXIT_OK);
    return 0;
  }
  ss = c->subsystems[c->next_subsystem++];
  return peerstore_iterate(c->client, ss, c->have_peer ? &c->peer : NULL,
                           c->key, on_export_record, c) != NULL
             ? 0
             : -1;
}

/* ------------------------------------------------------------------ */
/* backup: the copy into a file, renamed into place once whole          */

static int write_all(int fd, const void *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -1;
    p = (const char *)p + w;
    n -= (size_t)w;
  }
  return 0;
}

/* Removes a copy that did not finish, so no half file is left behind. */
static void backup_discard(cli *c) {
  if (c->backup_tmp != NULL) {
    unlink(c->backup_tmp);
    free(c->backup_tmp);
    c->backup_tmp = NULL;
  }
  if (c->backup_fd > STDOUT_FILENO)
    close(c->backup_fd);
  c->backup_fd = -1;
}

static void backup_write_failed(cli *c, peerstore_backup_op *op) {
  int e = errno;

  if (op != NULL) {
    peerstore_backup_cancel(op);
    c->backup_op = NULL;
  }
  /* Not even EPIPE is fine here: a reader that went away has half a
   * copy (`backup - | ssh host 'cat >f'`). */
  fprintf(stderr, "peerstore: backup: cannot write %s: %s\n",
          c->backup_tmp != NULL ? c->backup_file : "the output",
          strerror(e));
  finish(c, EXIT_OUTPUT);
}

static void on_backup_data(void *arg, const void *data, size_t len) {
  cli *c = arg;

  if (write_all(c->backup_fd, data, len) != 0) {
    backup_write_failed(c, c->backup_op);
    return;
  }
  c->backup_bytes += len;
  restart_timer(c);
}

/* The file's data and its name are on disk before the tool says so: the
 * rename replaces FILE only with a whole copy, and the directory's sync
 * keeps the rename.  -1: FILE is as it was; -2: the copy is FILE, but
 * the directory's sync failed. */
static int backup_keep(cli *c) {
  char *dir, *slash;
  int dfd, r = 0;

  if (c->backup_tmp == NULL)
    return 0;
  if (fsync(c->backup_fd) != 0 || rename(c->backup_tmp, c->backup_file) != 0)
    return -1;
  free(c->backup_tmp);
  c->backup_tmp = NULL;
  if ((dir = strdup(c->backup_file)) == NULL)
    return -2;
  slash = strrchr(dir, '/');
  if (slash == NULL)
    strcpy(dir, ".");
  else
    slash[slash == dir ? 1 : 0] = '\0';
  if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
      fsync(dfd) != 0)
    r = -2;
  if (dfd >= 0)
    close(dfd);
  free(dir);
  return r;
}

static void on_backup_done(void *arg, int status,
                           const peerstore_backup_result *res) {
  cli *c = arg;

  c->backup_op = NULL;
  if (status != 0) {
    fprintf(stderr, "peerstore: backup: %s (%s)%s%s\n",
            peerstore_strerror(status), peerstore_err_name(status),
            res->reason != NULL ? ": " : "",
            res->reason != NULL ? res->reason : "");
    backup_discard(c);
    finish(c, status_exit(status));
    return;
  }
  switch (backup_keep(c)) {
  case 0:
    break;
  case -1:
    backup_write_failed(c, NULL);
    return;
  default:
    fprintf(stderr, "peerstore: backup: the copy is in %s, but its "
                    "directory could not be synced: %s\n",
            c->backup_file, strerror(errno));
    finish(c, EXIT_OUTPUT);
    return;
  }
  if (c->backup_fd == STDOUT_FILENO)
    fprintf(stderr, "peerstore: backup: revision %" PRIu64 ", %" PRIu64
                    " bytes\n",
            res->revision, res->size);
  else if (c->json)
    printf("{\"revision\":%" PRIu64 ",\"bytes\":%" PRIu64 "}\n",
           res->revision, res->size);
  else
    printf("backup of revision %" PRIu64 ", %" PRIu64 " bytes, in %s\n",
           res->revision, res->size, c->backup_file);
  finish(c, EXIT_OK);
}

static int backup_start(cli *c) {
  size_t n;

  if (strcmp(c->backup_file, "-") == 0) {
    c->backup_fd = STDOUT_FILENO;
  } else {
    n = strlen(c->backup_file);
    if ((c->backup_tmp = malloc(n + 8)) == NULL)
      return -1;
    memcpy(c->backup_tmp, c->backup_file, n);
    memcpy(c->backup_tmp + n, ".XXXXXX", 8);
    /* mkstemp: mode 0600, as a copy of every record should be. */
    if ((c->backup_fd = mkostemp(c->backup_tmp, O_CLOEXEC)) < 0) {
      fprintf(stderr, "peerstore: backup: cannot create a file beside %s: "
                      "%s\n",
              c->backup_file, strerror(errno));
      free(c->backup_tmp);
      c->backup_tmp = NULL;
      finish(c, EXIT_OUTPUT);
      return 0;
    }
  }
  c->backup_op =
      peerstore_backup(c->client, on_backup_data, on_backup_done, c);
  if (c->backup_op == NULL) {
    backup_discard(c);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Main                                                                */

static int start(cli *c) {
  const peerstore_peer_id *peer = c->have_peer ? &c->peer : NULL;
  const char *cmd = c->command;
  void *op = NULL;

  if (strcmp(cmd, "batch") == 0)
    return batch_start(c);
  if (strcmp(cmd, "backup") == 0)
    return backup_start(c);
  if (strcmp(cmd, "export") == 0)
    return export_next(c);
  if (strcmp(cmd, "import") == 0) {
#ifdef HAVE_SQLITE
    return import_start(c);
#else
    fprintf(stderr, "peerstore: import: built without SQLite, which reads "
                    "its JSON\n");
    return -1;
#endif
  }
  if (strcmp(cmd, "store") == 0)
    op = peerstore_store(c->client, c->subsystem, peer, c->key, c->value,
                         c->value_size, c->expiry,
                         c->replace ? PEERSTORE_REPLACE : PEERSTORE_MULTIPLE,
                         on_store, c);
  else if (strcmp(cmd, "get") == 0 || strcmp(cmd, "iterate") == 0)
    op = peerstore_iterate(c->client, c->subsystem, peer, c->key, on_record,
                           c);
  else if (strcmp(cmd, "watch") == 0)
    op = peerstore_watch_ex(c->client, c->subsystem, peer, c->key, &c->wopts,
                            on_event, c);
  else if (strcmp(cmd, "remove") == 0)
    op = peerstore_remove(c->client, c->subsystem, peer, c->key, on_remove,
                          c);
  else if (strcmp(cmd, "stats") == 0)
    op = peerstore_stats(c->client, on_stats, c);
  if (op == NULL) {
    fprintf(stderr, "peerstore: %s: invalid arguments (a subsystem of "
                    "1..%d bytes and a key of 1..%d bytes are needed)\n",
            cmd, PEERSTORE_SUBSYSTEM_MAX, PEERSTORE_KEY_MAX);
    return -1;
  }
  return 0;
}

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "peerstore: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'peerstore --help'.\n");
  return EXIT_USAGE;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"subsystem", required_argument, NULL, 's'},
      {"peer", required_argument, NULL, 'p'},
      {"key", required_argument, NULL, 'k'},
      {"hex", no_argument, NULL, 'x'},
      {"file", required_argument, NULL, 'f'},
      {"replace", no_argument, NULL, 'r'},
      {"expiry", required_argument, NULL, 'e'},
      {"count", required_argument, NULL, 'n'},
      {"json", no_argument, NULL, 'j'},
      {"socket", required_argument, NULL, 'S'},
      {"timeout", required_argument, NULL, 't'},
      {"help", no_argument, NULL, 'h'},
      {"snapshot", no_argument, NULL, 'P'},
      {"removals", no_argument, NULL, 'R'},
      {"from", required_argument, NULL, 'F'},
      {"prometheus", no_argument, NULL, 'M'},
      {NULL, 0, NULL, 0}};
  static const char *commands[] = {"store", "get",   "iterate", "watch",
                                   "remove", "stats", "peer",    "batch",
                                   "export", "import", "backup"};
  cli c;
  peerstore_connect_opts copts;
  const char *file = NULL, *socket_path = NULL, *value_arg = NULL;
  double timeout_s = 10;
  char *end;
  size_t i;
  int ch, known = 0, r, timeout_given = 0;

  memset(&c, 0, sizeof(c));
  c.backup_fd = -1;
  c.expiry = PEERSTORE_EXPIRY_NEVER;
  while ((ch = getopt_long(argc, argv, "s:p:k:xf:re:n:jS:t:h", opts, NULL)) !=
         -1) {
    switch (ch) {
    case 's':
      if (c.n_subsystems == (int)(sizeof(c.subsystems) /
                                  sizeof(c.subsystems[0])))
        return usage_error("%s", "too many -s");
      c.subsystems[c.n_subsystems++] = c.subsystem = optarg;
      break;
    case 'k': c.key = optarg; break;
    case 'x': c.hex = 1; break;
    case 'f': file = optarg; break;
    case 'r': c.replace = 1; break;
    case 'j': c.json = 1; break;
    case 'S': socket_path = optarg; break;
    case 'p':
      if (peerstore_peer_from_string(optarg, &c.peer) != 0)
        return usage_error("bad peer id '%s' (52 base32 characters or 64 "
                           "hex digits)", optarg);
      c.have_peer = 1;
      break;
    case 'e':
      if (parse_expiry(optarg, &c.expiry) != 0)
        return usage_error("bad expiry '%s'", optarg);
      break;
    case 'n':
      c.count_limit = strtoull(optarg, &end, 10);
      if (*optarg == '\0' || *end != '\0')
        return usage_error("bad count '%s'", optarg);
      break;
    case 't':
      timeout_s = strtod(optarg, &end);
      if (*optarg == '\0' || *end != '\0' || timeout_s < 0)
        return usage_error("bad timeout '%s'", optarg);
      timeout_given = 1;
      break;
    case 'M': c.prometheus = 1; break;
    case 'P': c.wopts.flags |= PEERSTORE_WATCH_SNAPSHOT; break;
    case 'R': c.wopts.flags |= PEERSTORE_WATCH_REMOVALS; break;
    case 'F':
      c.wopts.from_revision = strtoull(optarg, &end, 10);
      if (*optarg == '\0' || *end != '\0' || c.wopts.from_revision == 0)
        return usage_error("bad revision '%s'", optarg);
      break;
    case 'h': usage(stdout); return EXIT_OK;
    default: usage(stderr); return EXIT_USAGE;
    }
  }
  if (optind >= argc)
    return usage_error("%s", "no command given");
  c.command = argv[optind++];
  for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
    known |= strcmp(c.command, commands[i]) == 0;
  if (!known)
    return usage_error("unknown command '%s'", c.command);
  if (optind < argc)
    value_arg = argv[optind++];
  if (optind < argc)
    return usage_error("unexpected argument '%s'", argv[optind]);

  if (c.prometheus && strcmp(c.command, "stats") != 0)
    return usage_error("%s", "--prometheus is for stats");
  if (strcmp(c.command, "peer") == 0) {
    char b32[PEERSTORE_PEER_B32_LEN + 1];
    if (!c.have_peer)
      return usage_error("%s", "peer needs -p ID");
    peerstore_peer_to_string(&c.peer, b32);
    printf("%s\n", b32);
    print_hex(stdout, c.peer.bytes, sizeof(c.peer.bytes));
    printf("\n");
    return EXIT_OK;
  }
  if (c.n_subsystems > 1 && strcmp(c.command, "export") != 0)
    return usage_error("%s", "one -s (more are for export)");
  if (strcmp(c.command, "export") == 0)
    c.json = 1; /* what import reads */
  c.timeout_ms = (uint64_t)(timeout_s * 1000);
  if (strcmp(c.command, "backup") == 0) {
    if (value_arg == NULL)
      return usage_error("%s", "backup needs FILE (or - for standard "
                               "output)");
    if (c.subsystem != NULL || c.have_peer || c.key != NULL)
      return usage_error("%s", "backup copies the whole store: no -s, -p "
                               "or -k");
    c.backup_file = value_arg;
    value_arg = NULL;
    /* Nothing arrives while the service makes the copy, which takes as
     * long as the store is large. */
    if (!timeout_given)
      timeout_s = 0;
    c.timeout_ms = (uint64_t)(timeout_s * 1000);
  } else if (strcmp(c.command, "batch") == 0 ||
             strcmp(c.command, "import") == 0) {
    /* The lines say where each record goes; a filter would be ignored. */
    if (c.subsystem != NULL || c.have_peer || c.key != NULL)
      return usage_error("%s takes no -s, -p or -k (each line names its "
                         "record)", c.command);
    if (value_arg != NULL)
      return usage_error("unexpected argument '%s'", value_arg);
    c.batch_file = file;
  } else if (strcmp(c.command, "stats") != 0 && c.subsystem == NULL)
    return usage_error("%s needs -s SUBSYSTEM", c.command);
  if (strcmp(c.command, "store") == 0 || strcmp(c.command, "get") == 0) {
    if (!c.have_peer || c.key == NULL)
      return usage_error("%s needs -p PEER and -k KEY", c.command);
  }
  if (strcmp(c.command, "store") == 0) {
    if ((value_arg != NULL) + (file != NULL) != 1)
      return usage_error("%s", "store needs exactly one of VALUE, --file "
                               "FILE, or - for standard input");
    if (file != NULL) {
      FILE *f = fopen(file, "rb");
      if (f == NULL || read_stream(f, &c.value, &c.value_size) != 0) {
        fprintf(stderr, "peerstore: cannot read %s: %s\n", file,
                strerror(errno));
        if (f != NULL)
          fclose(f);
        return EXIT_USAGE;
      }
      fclose(f);
    } else if (strcmp(value_arg, "-") == 0) {
      if (read_stream(stdin, &c.value, &c.value_size) != 0)
        return usage_error("cannot read the value from standard input: %s",
                           strerror(errno));
    } else if (c.hex) {
      if (parse_hex(value_arg, &c.value, &c.value_size) != 0)
        return usage_error("bad hex value '%s'", value_arg);
    } else {
      c.value_size = strlen(value_arg);
      c.value = (uint8_t *)strdup(value_arg);
    }
  } else if (value_arg != NULL && strcmp(c.command, "batch") != 0) {
    return usage_error("unexpected argument '%s'", value_arg);
  }

  uv_loop_init(&c.loop);
  /* A one-shot tool fails fast rather than waiting for a service to come
   * back; the timeout below bounds the rest.  A watch goes on across a
   * restart of the service, resuming where it was. */
  peerstore_connect_opts_init(&copts);
  copts.reconnect = strcmp(c.command, "watch") == 0;
  copts.timeout_ms = 0;
  c.client = peerstore_connect_ex(&c.loop, socket_path, &copts);
  if (c.client == NULL) {
    fprintf(stderr, "peerstore: bad socket path\n");
    free(c.value);
    uv_loop_close(&c.loop);
    return EXIT_USAGE;
  }
  uv_timer_init(&c.loop, &c.timer);
  c.timer.data = &c;
  uv_signal_init(&c.loop, &c.sigint);
  c.sigint.data = &c;
  uv_signal_start(&c.sigint, on_sigint, SIGINT);
  uv_signal_init(&c.loop, &c.sigterm);
  c.sigterm.data = &c;
  uv_signal_init(&c.loop, &c.sighup);
  c.sighup.data = &c;
  if (c.backup_file != NULL) {
    uv_signal_start(&c.sigterm, on_sigint, SIGTERM);
    uv_signal_start(&c.sighup, on_sigint, SIGHUP);
  }
  if (start(&c) != 0) {
    finish(&c, EXIT_USAGE);
  } else if (timeout_s > 0 && strcmp(c.command, "watch") != 0) {
    /* From now: reading a batch's input took time of its own. */
    uv_update_time(&c.loop);
    uv_timer_start(&c.timer, on_timeout, (uint64_t)(timeout_s * 1000), 0);
  }
  uv_run(&c.loop, UV_RUN_DEFAULT);
#ifdef HAVE_SQLITE
  /* An import cut short (timeout, ^C, a lost service). */
  if (c.json_db != NULL)
    json_close(&c);
#endif
  if (c.in != NULL && c.in != stdin)
    fclose(c.in);
  backup_discard(&c); /* a backup cut short (timeout, ^C, a lost service) */
  r = uv_loop_close(&c.loop);
  free(c.value);
  if (r != 0)
    fprintf(stderr, "peerstore: internal error: handles left open\n");
  return c.exit_code;
}
