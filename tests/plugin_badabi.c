/* plugin_badabi.c - a plugin built for another plugin ABI; the service
 * must refuse to load it. */
#include "peerstore_plugin.h"

static const peerstore_plugin_ops no_ops;
static const peerstore_plugin_desc desc = {PEERSTORE_PLUGIN_ABI + 1000,
                                           "badabi", &no_ops};

const peerstore_plugin_desc *peerstore_plugin_entry(void);
const peerstore_plugin_desc *peerstore_plugin_entry(void) { return &desc; }
