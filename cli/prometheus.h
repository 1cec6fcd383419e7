/* prometheus.h - the service's counters in the Prometheus text exposition
 * format (version 0.0.4), for node_exporter's textfile collector. */
#ifndef PEERSTORE_CLI_PROMETHEUS_H
#define PEERSTORE_CLI_PROMETHEUS_H

#include <stddef.h>
#include <stdio.h>

#include "peerstore.h"

/* Writes the n stats to out: one family per metric, each with its HELP
 * and TYPE lines and the peerstore_ prefix.  Counters end in _total;
 * quota.SUBSYSTEM.WHAT becomes peerstore_quota_WHAT{subsystem="..."};
 * names it does not know (a newer service, a third-party plugin's) are
 * written as untyped, not guessed. */
void prometheus_write(FILE *out, const peerstore_stat *st, size_t n);

#endif
