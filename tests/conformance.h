/* conformance.h - the plugin conformance suite.
 *
 * The same cmocka tests run against every storage plugin through the
 * plugin interface only.  A third-party plugin runs them by linking
 * tests/conformance.c into a small program that fills a conformance_target
 * and calls conformance_run() (see docs/plugins.md and test_memory.c).
 */
#ifndef PEERSTORE_CONFORMANCE_H
#define PEERSTORE_CONFORMANCE_H

#include "peerstore_plugin.h"

typedef struct conformance_target {
  const peerstore_plugin_desc *desc;
  /* Fills env (loop already set) for a fresh, empty instance: for example
   * a new database path.  May be NULL. */
  int (*prepare)(void *ctx, peerstore_plugin_env *env);
  /* Removes what prepare made.  May be NULL. */
  void (*cleanup)(void *ctx);
  void *ctx;
} conformance_target;

/* Runs every conformance test against t; returns the number that failed. */
int conformance_run(const char *group, const conformance_target *t);

#endif
