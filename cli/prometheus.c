/* prometheus.c - see prometheus.h. */
#include <inttypes.h>
#include <string.h>

#include "prometheus.h"

enum kind { UNTYPED, COUNTER, GAUGE };

typedef struct meta {
  const char *name; /* as the service names it */
  enum kind kind;
  const char *help;
  const char *family; /* the metric's name, when not the rule's */
} meta;

/* The service's counters (docs/peerstored.8), and the plugins' that this
 * tree ships. */
static const meta known[] = {
    {"records", GAUGE, "Records held (expired ones not yet purged included).", NULL},
    {"revision", GAUGE, "The last revision given out.", NULL},
    {"clients", GAUGE, "Clients connected.", NULL},
    {"clients_paused", GAUGE, "Clients whose input is paused.", NULL},
    {"output_bytes", GAUGE, "Bytes queued to clients.", NULL},
    {"watches", GAUGE, "Watches open.", NULL},
    {"iterations_active", GAUGE, "Iterations in progress.", NULL},
    {"stores", COUNTER, "Stores applied.", NULL},
    {"iterations", COUNTER, "Iterations begun.", NULL},
    {"removes", COUNTER, "Removes applied.", NULL},
    {"notifications", COUNTER, "Watch notifications sent.", NULL},
    {"watch_overflows", COUNTER, "Watches ended for falling behind.", NULL},
    {"protocol_errors", COUNTER, "Connections closed for a malformed message.", NULL},
    {"clients_stalled", COUNTER, "Clients closed for not reading.", NULL},
    {"refused", COUNTER, "Requests refused (access control, bad input).", NULL},
    {"limited", COUNTER, "Requests refused at a limit.", NULL},
    {"iterations_timed_out", COUNTER, "Iterations ended for a stalled reader.", NULL},
    {"clients_total", COUNTER, "Clients accepted.", NULL},
    {"purged", COUNTER, "Expired records purged.", NULL},
    {"watches_syncing", GAUGE, "Watches catching up from the history.", NULL},
    {"watch_resets", COUNTER, "Watches told to start again (RESET).", NULL},
    {"watch_progress", COUNTER, "Progress markers sent to quiet watches.", NULL},
    {"input_buffered", GAUGE, "Bytes of large requests being read.", NULL},
    {"clients_waiting_input", GAUGE, "Clients waiting for input room.", NULL},
    {"input_timed_out", COUNTER, "Clients closed for a request left unfinished.", NULL},
    {"batches", COUNTER, "Batches applied.", NULL},
    {"batch_conflicts", COUNTER, "Batches whose condition did not hold.", NULL},
    {"batches_repeated", COUNTER, "Batches answered again after a reconnect.", NULL},
    {"backups", COUNTER, "Backups sent whole.", NULL},
    {"backup_bytes", COUNTER, "Bytes of backups sent.", NULL},
    {"backup_running", GAUGE, "1 while a backup holds its copy.", NULL},
    {"history_first", GAUGE, "Every change after this revision is held.", NULL},
    {"history_last", GAUGE, "The last revision in the history.", NULL},
    {"history_events", GAUGE, "Changes held beyond the live records.", NULL},
    {"history_bytes", GAUGE, "Bytes those changes take.", NULL},
    {"max_value_size", GAUGE, "The largest value the service takes.", NULL},
    {"uptime_s", GAUGE, "Seconds since the service started.",
     "peerstore_uptime_seconds"},
    {"postgres.connected", GAUGE, "1 while the database session works.", NULL},
    {"postgres.connects", COUNTER, "Database sessions opened.", NULL},
    {"postgres.connections_lost", COUNTER, "Database sessions found dead.", NULL},
    {"postgres.transactions", COUNTER, "Write transactions committed.", NULL},
    {"postgres.retried", COUNTER, "Transactions run again on a new session.", NULL},
    {"postgres.interrupted", COUNTER,
     "Transactions whose COMMIT got no answer.", NULL},
    {"postgres.unavailable", COUNTER,
     "Requests failed for want of a database session.", NULL},
    {"postgres.doorbells", COUNTER, "Notifications from other services.", NULL},
    {"postgres.feeds", COUNTER, "Reads of other services' changes.", NULL},
    {"postgres.changes_of_others", COUNTER,
     "Changes other services made, reported here.", NULL},
    {"postgres.history_lost", COUNTER,
     "Times the history was trimmed past what this service had read.", NULL},
};

static const meta quota_meta[] = {
    {"records", GAUGE, "Records of a [quota] subsystem.", NULL},
    {"bytes", GAUGE, "Value bytes of a [quota] subsystem.", NULL},
    {"uid_records", GAUGE, "Records of the uid holding most of a quota.", NULL},
    {"uid_bytes", GAUGE, "Value bytes of the uid holding most of a quota.", NULL},
};

/* One sample, as written: its family (metric name), a label value (the
 * quota's subsystem, or NULL), what it is. */
typedef struct sample {
  char family[96];
  const char *subsystem;
  size_t subsystem_len;
  const meta *m;
  uint64_t value;
} sample;

/* name as a metric name: peerstore_, then [a-zA-Z0-9_] (others as _). */
static void family_name(char *out, size_t size, const char *name,
                        size_t len, enum kind kind) {
  size_t o, i;

  o = (size_t)snprintf(out, size, "peerstore_");
  for (i = 0; i < len && o + 1 < size; i++) {
    char ch = name[i];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
             (ch >= '0' && ch <= '9') || ch == '_';
    out[o++] = ok ? ch : '_';
  }
  out[o] = '\0';
  /* clients_total is a counter already named so. */
  if (kind == COUNTER && !(o >= 6 && strcmp(out + o - 6, "_total") == 0) &&
      o + 6 < size)
    strcat(out, "_total");
}

static void classify(const peerstore_stat *st, sample *s) {
  size_t i, len = strlen(st->name);

  memset(s, 0, sizeof(*s));
  s->value = st->value;
  if (strncmp(st->name, "quota.", 6) == 0) {
    /* quota.SUBSYSTEM.WHAT: the subsystem may hold dots itself. */
    const char *what = strrchr(st->name, '.');
    for (i = 0; i < sizeof(quota_meta) / sizeof(quota_meta[0]); i++) {
      if (what > st->name + 6 && strcmp(what + 1, quota_meta[i].name) == 0) {
        s->m = &quota_meta[i];
        s->subsystem = st->name + 6;
        s->subsystem_len = (size_t)(what - s->subsystem);
        snprintf(s->family, sizeof(s->family), "peerstore_quota_%s",
                 quota_meta[i].name);
        return;
      }
    }
  }
  for (i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
    if (strcmp(st->name, known[i].name) == 0) {
      s->m = &known[i];
      if (known[i].family != NULL)
        snprintf(s->family, sizeof(s->family), "%s", known[i].family);
      else
        family_name(s->family, sizeof(s->family), st->name, len,
                    known[i].kind);
      return;
    }
  }
  family_name(s->family, sizeof(s->family), st->name, len, UNTYPED);
}

/* Text with backslash and newline escaped, and double quote when quoted
 * (a label value; a HELP text escapes only the other two). */
static void write_escaped(FILE *out, const char *v, size_t n, int quoted) {
  size_t i;

  for (i = 0; i < n; i++) {
    if (v[i] == '\\' || (quoted && v[i] == '"'))
      fprintf(out, "\\%c", v[i]);
    else if (v[i] == '\n')
      fputs("\\n", out);
    else
      fputc(v[i], out);
  }
}

void prometheus_write(FILE *out, const peerstore_stat *st, size_t n) {
  static const char *const type_names[] = {"untyped", "counter", "gauge"};
  sample a, b;
  size_t i, j;

  /* Each family once, at its first sample, with all of its samples: the
   * format wants a family's lines together. */
  for (i = 0; i < n; i++) {
    int seen = 0;
    classify(&st[i], &a);
    for (j = 0; j < i && !seen; j++) {
      classify(&st[j], &b);
      seen = strcmp(a.family, b.family) == 0;
    }
    if (seen)
      continue;
    if (a.m != NULL) {
      fprintf(out, "# HELP %s %s\n", a.family, a.m->help);
    } else {
      fprintf(out, "# HELP %s peerstored's ", a.family);
      write_escaped(out, st[i].name, strlen(st[i].name), 0);
      fputs(".\n", out);
    }
    fprintf(out, "# TYPE %s %s\n", a.family,
            type_names[a.m != NULL ? a.m->kind : UNTYPED]);
    for (j = i; j < n; j++) {
      classify(&st[j], &b);
      if (strcmp(a.family, b.family) != 0)
        continue;
      fputs(b.family, out);
      if (b.subsystem != NULL) {
        fputs("{subsystem=\"", out);
        write_escaped(out, b.subsystem, b.subsystem_len, 1);
        fputs("\"}", out);
      }
      fprintf(out, " %" PRIu64 "\n", b.value);
    }
  }
}
