/* plugin_badabi.c - a plugin built for plugin ABI 2, whose operations may
 * both fail and call back; the service must refuse to load it. */
#include "peerstore_plugin.h"

/* The ABI number is the descriptor's first field in every ABI. */
static const peerstore_plugin_ops no_ops;
static const peerstore_plugin_desc desc = {
    .abi = 2, .name = "badabi", .ops = &no_ops};

const peerstore_plugin_desc *peerstore_plugin_entry(void);
const peerstore_plugin_desc *peerstore_plugin_entry(void) { return &desc; }
