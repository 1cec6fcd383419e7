#!/bin/sh
# test_watch_postgres.sh - the change-stream suite (test_watch) again,
# every service on the postgres plugin, each test on a fresh database of
# a PostgreSQL server the test starts (skipped, exit 77, with the reason
# when PostgreSQL is not installed).
PEERSTORE_TEST_WATCH_PLUGIN=postgres
export PEERSTORE_TEST_WATCH_PLUGIN
bin=${PEERSTORE_TEST_WATCH:-./tests/test_watch}
if [ "${PEERSTORE_TEST_VALGRIND:-}" = 1 ]; then
  exec "${top_builddir:-.}/libtool" --mode=execute valgrind -q \
    --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
    --error-exitcode=99 "$bin"
fi
exec "$bin"
