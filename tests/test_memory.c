/* test_memory.c - the conformance suite against the memory plugin. */
#include "conformance.h"
#include "memory.h"

int main(void) {
  conformance_target t = {peerstore_plugin_memory(), NULL, NULL, NULL};
  return conformance_run("memory plugin", &t);
}
