/* config.c - defaults and the INI config file of peerstored.
 *
 * The file has a [peerstored] section for the service and a [plugin]
 * section whose keys are handed to the storage plugin.  Lines are
 * "name = value"; '#' and ';' start comments.  Command-line flags are
 * applied after the file, so they win.
 */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

void config_defaults(config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->socket_mode = 0600;
  cfg->max_value_size = PEERSTORE_VALUE_MAX_DEFAULT;
  cfg->purge_interval_ms = 60 * 1000;
  cfg->output_soft_limit = 4u << 20;
  cfg->watch_output_limit = 16u << 20;
  cfg->max_clients = 4096;
  cfg->max_watches = 1024;
  cfg->max_iterations = 64;
  cfg->iteration_timeout_ms = 60 * 1000;
  cfg->max_inflight = 4096;
  cfg->max_inflight_bytes = 32u << 20;
  cfg->write_timeout_ms = 60 * 1000;
  cfg->input_buffer_limit = 256u << 20;
  cfg->read_timeout_ms = 60 * 1000;
  cfg->history_events = 100000;
  cfg->history_bytes = 64u << 20;
  cfg->batch_max_ops = 10000;
  cfg->batch_max_bytes = 4u << 20;
  cfg->batch_retry_window_ms = 600 * 1000;
  cfg->log_level = PEERSTORE_LOG_INFO;
  cfg->ready_fd = -1;
  cfg->socket_gid = -1;
}

/* ------------------------------------------------------------------ */
/* Access lists                                                        */

/* A user (group != 0: a group) by name, number or "self". */
static int resolve_id(const char *s, int group, uint32_t *out) {
  struct passwd *pw;
  struct group *gr;
  char *end;
  unsigned long v;

  if (strcmp(s, "self") == 0) {
    *out = group ? (uint32_t)getgid() : (uint32_t)getuid();
    return 0;
  }
  v = strtoul(s, &end, 10);
  if (*s != '\0' && *end == '\0' && v < UINT32_MAX) {
    *out = (uint32_t)v;
    return 0;
  }
  if (group) {
    if ((gr = getgrnam(s)) == NULL)
      return -1;
    *out = (uint32_t)gr->gr_gid;
  } else {
    if ((pw = getpwnam(s)) == NULL)
      return -1;
    *out = (uint32_t)pw->pw_uid;
  }
  return 0;
}

static int idlist_add(idlist *l, uint32_t id) {
  uint32_t *n = realloc(l->ids, (l->n + 1) * sizeof(*n));

  if (n == NULL)
    return -1;
  n[l->n++] = id;
  l->ids = n;
  return 0;
}

/* Parses "a, b, @g, self" into users and groups, which it replaces (the
 * last setting of a key wins, a flag over the file); with gids NULL,
 * every entry is read by kind (users when kind_group is 0, groups when
 * 1).  On error the lists are left as they were. */
static int parse_ids(const char *v, idlist *uids, idlist *gids,
                     int kind_group) {
  char *copy = strdup(v), *tok, *save = NULL;
  idlist nu = {NULL, 0}, ng = {NULL, 0};
  int r = 0;

  if (copy == NULL)
    return -1;
  for (tok = strtok_r(copy, ", \t", &save); tok != NULL && r == 0;
       tok = strtok_r(NULL, ", \t", &save)) {
    uint32_t id;
    int group = kind_group;
    if (gids != NULL && tok[0] == '@') {
      group = 1;
      tok++;
    }
    r = resolve_id(tok, group, &id) ||
        idlist_add(group && gids ? &ng : &nu, id);
  }
  free(copy);
  if (r) {
    free(nu.ids);
    free(ng.ids);
    return -1;
  }
  free(uids->ids);
  *uids = nu;
  if (gids != NULL) {
    free(gids->ids);
    *gids = ng;
  }
  return 0;
}

static int idlist_has(const idlist *l, uint32_t id) {
  size_t i;

  for (i = 0; i < l->n; i++)
    if (l->ids[i] == id)
      return 1;
  return 0;
}

int config_id_match(const idlist *uids, const idlist *gids, uint32_t uid,
                    uint32_t gid) {
  return idlist_has(uids, uid) || idlist_has(gids, gid);
}

const write_rule *config_write_rule(const config *cfg, const char *ss) {
  size_t i;

  for (i = 0; i < cfg->n_write_rules; i++)
    if (strcmp(cfg->write_rules[i].subsystem, ss) == 0)
      return &cfg->write_rules[i];
  return NULL;
}

/* "100000 records, 64M" or "16M, per uid": comma-separated limits, at
 * least one.  Returns 0 or -1. */
static int parse_quota(const char *v, peerstore_plugin_quota *q) {
  char buf[256], *tok, *save = NULL, *end;
  uint64_t n;

  if (strlen(v) >= sizeof(buf))
    return -1;
  strcpy(buf, v);
  q->max_records = q->max_bytes = 0;
  q->flags = 0;
  for (tok = strtok_r(buf, ",", &save); tok != NULL;
       tok = strtok_r(NULL, ",", &save)) {
    while (isspace((unsigned char)*tok))
      tok++;
    end = tok + strlen(tok);
    while (end > tok && isspace((unsigned char)end[-1]))
      *--end = '\0';
    if (strcmp(tok, "per uid") == 0) {
      q->flags |= PEERSTORE_PLUGIN_QUOTA_PER_WRITER;
    } else if ((end = strstr(tok, " records")) != NULL && end[8] == '\0') {
      *end = '\0';
      if (config_parse_size(tok, &n) != 0 || n == 0)
        return -1;
      q->max_records = n;
    } else if (config_parse_size(tok, &n) == 0 && n > 0) {
      q->max_bytes = n;
    } else {
      return -1;
    }
  }
  return q->max_records != 0 || q->max_bytes != 0 ? 0 : -1;
}

const peerstore_plugin_quota *config_quota(const config *cfg,
                                           const char *ss) {
  size_t i;

  for (i = 0; i < cfg->n_quotas; i++)
    if (strcmp(cfg->quotas[i].subsystem, ss) == 0)
      return &cfg->quotas[i];
  return NULL;
}

static int finish_quota(config *cfg, const config_entry *e) {
  peerstore_plugin_quota *q = (peerstore_plugin_quota *)config_quota(cfg,
                                                                     e->name);

  if (q == NULL) {
    q = realloc(cfg->quotas, (cfg->n_quotas + 1) * sizeof(*cfg->quotas));
    if (q == NULL)
      return -1;
    cfg->quotas = q;
    q = &cfg->quotas[cfg->n_quotas++];
    q->subsystem = e->name; /* lives as long as the entries */
  }
  if (parse_quota(e->value, q) != 0) {
    fprintf(stderr,
            "peerstored: [quota] %s = %s: expected limits like "
            "\"100000 records, 64M\" or \"16M, per uid\"\n",
            e->name, e->value);
    return -1;
  }
  return 0;
}

int config_finish(config *cfg) {
  size_t i;

  for (i = 0; i < cfg->n_entries; i++) {
    config_entry *e = &cfg->entries[i];
    write_rule *r;

    if (strcmp(e->section, "quota") == 0) {
      if (finish_quota(cfg, e) != 0)
        return -1;
      continue;
    }
    if (strcmp(e->section, "write") != 0)
      continue;
    /* A subsystem named again: its last line wins, as for every key. */
    r = (write_rule *)config_write_rule(cfg, e->name);
    if (r == NULL) {
      r = realloc(cfg->write_rules,
                  (cfg->n_write_rules + 1) * sizeof(*cfg->write_rules));
      if (r == NULL)
        return -1;
      cfg->write_rules = r;
      r = &cfg->write_rules[cfg->n_write_rules++];
      memset(r, 0, sizeof(*r));
      r->subsystem = strdup(e->name);
    }
    if (r->subsystem == NULL || parse_ids(e->value, &r->uids, &r->gids, 0)) {
      fprintf(stderr, "peerstored: [write] %s = %s: unknown user or group\n",
              e->name, e->value);
      return -1;
    }
  }
  return 0;
}

int config_parse_size(const char *s, uint64_t *out) {
  char *end;
  unsigned long long v;

  errno = 0;
  if (!isdigit((unsigned char)*s))
    return -1;
  v = strtoull(s, &end, 10);
  if (errno != 0)
    return -1;
  switch (*end) {
  case 'k': case 'K': v <<= 10; end++; break;
  case 'm': case 'M': v <<= 20; end++; break;
  case 'g': case 'G': v <<= 30; end++; break;
  default: break;
  }
  if (*end != '\0')
    return -1;
  *out = v;
  return 0;
}

static char *trim(char *s) {
  char *e;

  while (isspace((unsigned char)*s))
    s++;
  e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1]))
    *--e = '\0';
  return s;
}

static int set_str(char **dst, const char *v) {
  char *d = strdup(v);

  if (d == NULL)
    return -1;
  free(*dst);
  *dst = d;
  return 0;
}

int config_set(config *cfg, const char *name, const char *v) {
  uint64_t n;
  char *end;

  if (strcmp(name, "socket") == 0)
    return set_str(&cfg->socket_path, v);
  if (strcmp(name, "plugin") == 0)
    return set_str(&cfg->plugin, v);
  if (strcmp(name, "plugin_dir") == 0)
    return set_str(&cfg->plugin_dir, v);
  if (strcmp(name, "database") == 0)
    return set_str(&cfg->database, v);
  if (strcmp(name, "backup_dir") == 0)
    return set_str(&cfg->backup_dir, v);
  if (strcmp(name, "socket_mode") == 0) {
    unsigned long m = strtoul(v, &end, 8);
    if (*v == '\0' || *end != '\0' || m > 0777)
      return -1;
    cfg->socket_mode = (unsigned)m;
    return 0;
  }
  if (strcmp(name, "allow_uids") == 0)
    return parse_ids(v, &cfg->allow_uids, NULL, 0);
  if (strcmp(name, "allow_gids") == 0)
    return parse_ids(v, &cfg->allow_gids, NULL, 1);
  if (strcmp(name, "backup_allow") == 0)
    return parse_ids(v, &cfg->backup_uids, &cfg->backup_gids, 0);
  if (strcmp(name, "socket_group") == 0) {
    uint32_t gid;
    if (resolve_id(v, 1, &gid) != 0)
      return -1;
    cfg->socket_gid = (int)gid;
    return 0;
  }
  if (strcmp(name, "log_level") == 0) {
    static const char *lv[] = {"error", "warn", "info", "debug"};
    int i;
    for (i = 0; i < 4; i++)
      if (strcmp(v, lv[i]) == 0) {
        cfg->log_level = i;
        return 0;
      }
    return -1;
  }
  if (config_parse_size(v, &n) != 0)
    return -1;
  if (strcmp(name, "max_value_size") == 0) {
    if (n > PEERSTORE_VALUE_MAX_HARD)
      return -1;
    cfg->max_value_size = (uint32_t)n;
  } else if (strcmp(name, "purge_interval") == 0) {
    if (n == 0 || n > UINT64_MAX / 1000)
      return -1;
    cfg->purge_interval_ms = n * 1000;
  } else if (strcmp(name, "output_limit") == 0) {
    cfg->output_soft_limit = (size_t)n;
  } else if (strcmp(name, "watch_output_limit") == 0) {
    cfg->watch_output_limit = (size_t)n;
  } else if (strcmp(name, "max_clients") == 0 && n > 0 && n <= UINT32_MAX) {
    cfg->max_clients = (uint32_t)n;
  } else if (strcmp(name, "max_watches") == 0 && n > 0 && n <= UINT32_MAX) {
    cfg->max_watches = (uint32_t)n;
  } else if (strcmp(name, "max_inflight") == 0 && n > 0 &&
             n <= UINT32_MAX) {
    cfg->max_inflight = (uint32_t)n;
  } else if (strcmp(name, "max_inflight_bytes") == 0 && n > 0 &&
             n <= SIZE_MAX / 2) {
    cfg->max_inflight_bytes = (size_t)n;
  } else if (strcmp(name, "input_buffer_limit") == 0 && n > 0 &&
             n <= SIZE_MAX / 2) {
    cfg->input_buffer_limit = (size_t)n;
  } else if (strcmp(name, "read_timeout") == 0 && n > 0 &&
             n < UINT64_MAX / 1000) {
    cfg->read_timeout_ms = n * 1000;
  } else if (strcmp(name, "write_timeout") == 0 && n > 0 &&
             n < UINT64_MAX / 1000) {
    cfg->write_timeout_ms = n * 1000;
  } else if (strcmp(name, "max_iterations") == 0 && n > 0 &&
             n <= UINT32_MAX) {
    cfg->max_iterations = (uint32_t)n;
  } else if (strcmp(name, "iteration_timeout") == 0 && n > 0 &&
             n < UINT64_MAX / 1000) {
    cfg->iteration_timeout_ms = n * 1000;
  } else if (strcmp(name, "history_events") == 0) {
    cfg->history_events = n;
  } else if (strcmp(name, "history_bytes") == 0) {
    cfg->history_bytes = n;
  } else if (strcmp(name, "batch_max_ops") == 0 && n > 0 &&
             n <= UINT32_MAX) {
    cfg->batch_max_ops = (uint32_t)n;
  } else if (strcmp(name, "batch_max_bytes") == 0 && n >= 1024 &&
             n <= PEERSTORE_VALUE_MAX_HARD) {
    cfg->batch_max_bytes = (size_t)n;
  } else if (strcmp(name, "batch_retry_window") == 0 && n > 0 &&
             n <= 10ull * 366 * 86400) {
    cfg->batch_retry_window_ms = n * 1000;
  } else {
    return -1;
  }
  return 0;
}

int config_load(config *cfg, const char *path) {
  FILE *f = fopen(path, "r");
  char line[4096], section[64] = "";
  int lineno = 0;

  if (f == NULL) {
    fprintf(stderr, "peerstored: cannot open config file %s: %s\n", path,
            strerror(errno));
    return -1;
  }
  while (fgets(line, sizeof(line), f) != NULL) {
    char *s = trim(line), *eq, *name, *value;

    lineno++;
    if (*s == '\0' || *s == '#' || *s == ';')
      continue;
    if (*s == '[') {
      char *e = strchr(s, ']');
      if (e == NULL || e[1] != '\0' || (size_t)(e - s - 1) >= sizeof(section))
        goto bad;
      *e = '\0';
      snprintf(section, sizeof(section), "%s", trim(s + 1));
      continue;
    }
    if ((eq = strchr(s, '=')) == NULL)
      goto bad;
    *eq = '\0';
    name = trim(s);
    value = trim(eq + 1);
    if (*name == '\0')
      goto bad;
    if (strcmp(section, "peerstored") == 0 && config_set(cfg, name, value) != 0) {
      fprintf(stderr, "peerstored: %s:%d: bad setting %s = %s\n", path,
              lineno, name, value);
      fclose(f);
      return -1;
    }
    if (config_add(cfg, section, name, value) != 0)
      goto bad;
  }
  fclose(f);
  return 0;
bad:
  fprintf(stderr, "peerstored: %s:%d: cannot parse line\n", path, lineno);
  fclose(f);
  return -1;
}

int config_add(config *cfg, const char *section, const char *name,
               const char *value) {
  config_entry *ne = realloc(cfg->entries,
                             (cfg->n_entries + 1) * sizeof(*ne));

  if (ne == NULL)
    return -1;
  cfg->entries = ne;
  ne = &cfg->entries[cfg->n_entries];
  ne->section = strdup(section);
  ne->name = strdup(name);
  ne->value = strdup(value);
  cfg->n_entries++;
  return ne->section && ne->name && ne->value ? 0 : -1;
}

const char *config_get(const config *cfg, const char *section,
                       const char *name) {
  size_t i;

  /* The last setting of a key wins, as it would when reading top down. */
  for (i = cfg->n_entries; i-- > 0;)
    if (strcmp(cfg->entries[i].section, section) == 0 &&
        strcmp(cfg->entries[i].name, name) == 0)
      return cfg->entries[i].value;
  return NULL;
}

void config_free(config *cfg) {
  size_t i;

  for (i = 0; i < cfg->n_entries; i++) {
    free(cfg->entries[i].section);
    free(cfg->entries[i].name);
    free(cfg->entries[i].value);
  }
  free(cfg->entries);
  for (i = 0; i < cfg->n_write_rules; i++) {
    free(cfg->write_rules[i].subsystem);
    free(cfg->write_rules[i].uids.ids);
    free(cfg->write_rules[i].gids.ids);
  }
  free(cfg->write_rules);
  free(cfg->quotas);
  free(cfg->allow_uids.ids);
  free(cfg->allow_gids.ids);
  free(cfg->backup_uids.ids);
  free(cfg->backup_gids.ids);
  free(cfg->socket_path);
  free(cfg->plugin);
  free(cfg->plugin_dir);
  free(cfg->database);
  free(cfg->backup_dir);
  memset(cfg, 0, sizeof(*cfg));
}
