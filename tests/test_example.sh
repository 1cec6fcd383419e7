#!/bin/sh
# test_example.sh - runs docs/examples/hello against a real service.
set -u
PEERSTORED=${PEERSTORED:-../service/peerstored}
EXAMPLE=${PEERSTORE_EXAMPLE:-../docs/examples/hello}
dir=$(mktemp -d "${TMPDIR:-/tmp}/peerstore-example-XXXXXX")
trap 'kill $svc 2>/dev/null; wait $svc 2>/dev/null; rm -rf "$dir"' EXIT
mkfifo "$dir/ready"
"$PEERSTORED" --socket "$dir/sock" --log-level warn --ready-fd 3 3>"$dir/ready" &
svc=$!
read -r line <"$dir/ready"
out=$(PEERSTORE_SOCKET="$dir/sock" "$EXAMPLE")
rc=$?
echo "$out"
pass=0 fail=0
if [ $rc = 0 ] && echo "$out" | grep -q "removed 2 records: success" &&
   [ "$(echo "$out" | grep -c '^watch: ')" = 2 ]; then
  pass=1
  echo "ok - example program"
else
  fail=1
  echo "not ok - example program (exit $rc)"
fi
echo "$pass passed, $fail failed"
[ $fail = 0 ]
