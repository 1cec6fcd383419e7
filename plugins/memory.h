/* memory.h - the in-memory plugin, compiled into peerstored (and into the
 * conformance tests) rather than loaded from a file. */
#ifndef PEERSTORE_PLUGIN_MEMORY_H
#define PEERSTORE_PLUGIN_MEMORY_H

#include "peerstore_plugin.h"

const peerstore_plugin_desc *peerstore_plugin_memory(void);

#endif
