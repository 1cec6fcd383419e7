/* plugin.c - finds, loads and opens the storage plugin.
 *
 * "memory" is compiled in.  Any other name is a file
 * peerstore_plugin_<name>.so searched for in, in order: --plugin-dir (or
 * plugin_dir in the config), each directory of $PEERSTORE_PLUGIN_PATH, and
 * the install directory.  A name containing '/' is a path to the .so.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "service.h"

#ifndef PEERSTORE_PLUGIN_DIR
#define PEERSTORE_PLUGIN_DIR "/usr/local/lib/peerstore"
#endif

/* A plugin's options: its own section ([postgres], -o postgres.NAME=...)
 * first, then the [plugin] section every plugin reads. */
static const char *plugin_option(void *ctx, const char *name) {
  const plugin *p = ctx;
  const char *v = config_get(p->cfg, p->desc->name, name);

  return v != NULL ? v : config_get(p->cfg, "plugin", name);
}

/* Loads one candidate file.  Returns 1 if it was loaded and checked, 0 if
 * the file does not exist, -1 if it exists but is unusable (logged). */
static int try_file(plugin *p, const char *path, const char *name) {
  peerstore_plugin_entry_fn entry;
  const peerstore_plugin_desc *d;

  if (access(path, F_OK) != 0)
    return 0;
  if (uv_dlopen(path, &p->lib) != 0) {
    LOG_ERROR("plugin %s: cannot load %s: %s", name, path,
              uv_dlerror(&p->lib));
    uv_dlclose(&p->lib);
    return -1;
  }
  p->lib_open = 1;
  if (uv_dlsym(&p->lib, PEERSTORE_PLUGIN_ENTRY, (void **)&entry) != 0) {
    LOG_ERROR("plugin %s: %s has no symbol %s", name, path,
              PEERSTORE_PLUGIN_ENTRY);
    return -1;
  }
  d = entry();
  if (d == NULL || d->abi != PEERSTORE_PLUGIN_ABI || d->ops == NULL) {
    LOG_ERROR("plugin %s: %s has plugin ABI %u, this service needs %u%s",
              name, path, d ? (unsigned)d->abi : 0u,
              (unsigned)PEERSTORE_PLUGIN_ABI,
              d && d->abi < PEERSTORE_PLUGIN_ABI
                  ? " (rebuild the plugin against this peerstore_plugin.h)"
                  : "");
    return -1;
  }
  /* A history without removals, or half of one, would give watchers
   * gaps; refused rather than trusted. */
  if ((d->ops->history_read == NULL) != (d->ops->history_info == NULL) ||
      (d->ops->history_read != NULL &&
       !(d->flags & PEERSTORE_PLUGIN_REPORTS_REMOVALS))) {
    LOG_ERROR("plugin %s: %s has history_read without history_info or "
              "without PEERSTORE_PLUGIN_REPORTS_REMOVALS", name, path);
    return -1;
  }
  p->desc = d;
  LOG_INFO("loaded plugin %s from %s", d->name, path);
  return 1;
}

static int find_plugin(plugin *p, const config *cfg, const char *name) {
  char path[4096], tried[8192] = "";
  const char *env = getenv("PEERSTORE_PLUGIN_PATH");
  const char *dirs[3];
  size_t i;
  int r;

  if (strchr(name, '/') != NULL) {
    r = try_file(p, name, name);
    if (r == 0)
      LOG_ERROR("plugin file %s does not exist", name);
    return r == 1 ? 0 : -1;
  }
  dirs[0] = cfg->plugin_dir;
  dirs[1] = env;
  dirs[2] = PEERSTORE_PLUGIN_DIR;
  for (i = 0; i < 3; i++) {
    const char *d = dirs[i], *e;

    /* Each entry may be a colon-separated list. */
    while (d != NULL && *d != '\0') {
      size_t n;
      e = strchr(d, ':');
      n = e ? (size_t)(e - d) : strlen(d);
      if (n > 0 && n < 3000) {
        snprintf(path, sizeof(path), "%.*s/peerstore_plugin_%s.so", (int)n, d,
                 name);
        r = try_file(p, path, name);
        if (r != 0)
          return r == 1 ? 0 : -1;
        if (strlen(tried) + strlen(path) + 3 < sizeof(tried)) {
          if (tried[0] != '\0')
            strcat(tried, ", ");
          strcat(tried, path);
        }
      }
      d = e ? e + 1 : NULL;
    }
  }
  LOG_ERROR("plugin %s not found; looked for %s (set --plugin-dir or "
            "PEERSTORE_PLUGIN_PATH, or give a path)", name, tried);
  return -1;
}

int plugin_load(plugin *p, const config *cfg, uv_loop_t *loop,
                void (*changed)(void *ctx, const peerstore_plugin_change *),
                void *ctx) {
  const char *name = cfg->plugin ? cfg->plugin : "memory";
  peerstore_plugin_env env;
  int r;

  memset(p, 0, sizeof(*p));
  p->cfg = cfg;
  if (strcmp(name, "memory") == 0)
    p->desc = peerstore_plugin_memory();
  else if (find_plugin(p, cfg, name) != 0) {
    plugin_release(p);
    return -1;
  }
  memset(&env, 0, sizeof(env));
  env.loop = loop;
  env.database = cfg->database;
  env.option = plugin_option;
  env.option_ctx = p;
  env.log = log_plugin;
  env.strerror = peerstore_strerror;
  env.changed = changed;
  env.changed_ctx = ctx;
  env.history_events = cfg->history_events;
  env.history_bytes = cfg->history_bytes;
  if (cfg->n_quotas > 0 &&
      !(p->desc->flags & PEERSTORE_PLUGIN_QUOTAS &&
        p->desc->ops->quota_usage != NULL)) {
    LOG_ERROR("plugin %s does not enforce quotas; remove the [quota] "
              "section or use a plugin that does", p->desc->name);
    plugin_release(p);
    return -1;
  }
  env.quotas = cfg->quotas;
  env.n_quotas = cfg->n_quotas;
  r = p->desc->ops->open(&env, &p->instance);
  if (r != 0) {
    LOG_ERROR("plugin %s failed to open%s%s: %s", p->desc->name,
              cfg->database ? " database " : "",
              cfg->database ? cfg->database : "", peerstore_strerror(r));
    p->instance = NULL;
    /* The plugin may have handles closing on the loop: keep its code
     * mapped until the caller has run the loop empty. */
    return -1;
  }
  return 0;
}

void plugin_unload(plugin *p) {
  if (p->instance != NULL)
    p->desc->ops->close(p->instance);
  p->instance = NULL;
}

void plugin_release(plugin *p) {
  plugin_unload(p);
  if (p->lib_open)
    uv_dlclose(&p->lib);
  p->lib_open = 0;
  p->desc = NULL;
}
