#!/bin/sh
# summary.sh DIR - sums the test cases in the automake logs under DIR:
# cmocka cases that started ("[ RUN      ]") and passed ("[       OK ]"),
# and the shell tests' "ok - " / "not ok - " lines; skipped cases are
# counted apart.  A test program that failed
# without reporting a failed case (a crash) counts as one failure.
# EXTRA (optional, 0 or 1) is a failure seen elsewhere, e.g. a build that
# broke; it is counted unless a test case already reported a failure.
# Prints "N passed, N failed" and exits non-zero if anything failed.
dir=${1:-tests}
extra=${2:-0}
pass=0
fail=0
skip=0
for log in "$dir"/*.log "$dir"/*/*.log; do
  [ -f "$log" ] || continue
  trs=${log%.log}.trs
  [ -f "$trs" ] || continue
  p=$(grep -c -E '^\[       OK \]|^ok - ' "$log")
  runs=$(grep -c -E '^\[ RUN      \]' "$log")
  oks=$(grep -c -E '^\[       OK \]' "$log")
  # A skipped cmocka case started and did not pass, but did not fail.
  skipped=$(grep -E '^ *[0-9]+ SKIPPED TEST\(S\)' "$log" |
    awk '{ n += $1 } END { print n + 0 }')
  skip=$((skip + skipped))
  f=$(( $(grep -c -E '^not ok - ' "$log") + runs - oks - skipped ))
  if grep -q ':test-result: FAIL' "$trs" && [ "$f" = 0 ]; then
    f=1
  fi
  pass=$((pass + p))
  fail=$((fail + f))
done
[ "$fail" = 0 ] && fail=$extra
if [ "$skip" -gt 0 ]; then
  echo "$pass passed, $fail failed, $skip skipped"
else
  echo "$pass passed, $fail failed"
fi
[ "$fail" = 0 ] && [ "$pass" -gt 0 ]
