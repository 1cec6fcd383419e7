#!/bin/sh
# valgrind.sh - LOG_COMPILER for `configure --enable-valgrind`: runs each
# test program under valgrind (through libtool, for the uninstalled
# library), and the services the tests start under valgrind too.
# Shell-script tests run as they are; the programs they call are not
# wrapped.
PEERSTORE_TEST_VALGRIND=1
export PEERSTORE_TEST_VALGRIND
case "$1" in
*.sh) exec sh "$@" ;;
esac
exec "${top_builddir:-.}/libtool" --mode=execute valgrind -q \
  --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
  --error-exitcode=99 "$@"
