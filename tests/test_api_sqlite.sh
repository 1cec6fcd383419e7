#!/bin/sh
# test_api_sqlite.sh - the whole client API suite again, with every
# service it starts using the sqlite plugin on a fresh database.
PEERSTORE_TEST_PLUGIN=sqlite
export PEERSTORE_TEST_PLUGIN
bin=${PEERSTORE_TEST_API:-./test_api}
if [ "${PEERSTORE_TEST_VALGRIND:-}" = 1 ]; then
  exec "${top_builddir:-.}/libtool" --mode=execute valgrind -q \
    --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
    --error-exitcode=99 "$bin"
fi
exec "$bin"
