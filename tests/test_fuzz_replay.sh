#!/bin/sh
# test_fuzz_replay.sh - replays the fuzz seed corpus and every saved crash
# through both fuzz targets (built without libFuzzer).
set -u
src=${srcdir:-..}/tests/fuzz
bin=${PEERSTORE_FUZZ_BIN:-./fuzz}
files=$(ls "$src"/corpus/* "$src"/regressions/* 2>/dev/null)
pass=0 fail=0
for t in replay_wire replay_dispatch; do
  # shellcheck disable=SC2086
  if "$bin/$t" $files; then
    pass=$((pass + 1))
    echo "ok - $t"
  else
    fail=$((fail + 1))
    echo "not ok - $t"
  fi
done
echo "$pass passed, $fail failed"
[ $fail = 0 ]
