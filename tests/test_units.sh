#!/bin/sh
# test_units.sh - the systemd units as systemd reads them: verify finds
# nothing to say (with ExecStart= on the built peerstored), the sandboxing
# keeps the exposure systemd-analyze security reports low, and the socket
# unit listens where the service and the library look by default.
# Skipped (77) where systemd-analyze is not installed.
set -u
command -v systemd-analyze >/dev/null 2>&1 || {
  echo "skipped: systemd-analyze not installed (Debian: apt-get install systemd)"
  exit 77
}
src=${srcdir:-.}
bin=$(dirname "${PEERSTORED:-../service/peerstored}")
dir=$(mktemp -d "${TMPDIR:-/tmp}/peerstore-units-XXXXXX")
trap 'rm -rf "$dir"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
not_ok() { fail=$((fail + 1)); echo "not ok - $1"; }

sed -e "s|@bindir@|$(cd "$bin" && pwd)|g" \
  "$src/systemd/peerstored.service.in" >"$dir/peerstored.service"
cp "$src/systemd/peerstored.socket" "$dir/"
if systemd-analyze verify --man=no "$dir/peerstored.service" \
    "$dir/peerstored.socket" >"$dir/verify" 2>&1 && [ ! -s "$dir/verify" ]; then
  ok "systemd-analyze verify: nothing to say"
else
  not_ok "systemd-analyze verify: $(cat "$dir/verify")"
fi
# Exposure 0 (locked down) to 10 (none); systemd calls up to 2.9 "OK".
level=$(systemd-analyze security --offline=true "$dir/peerstored.service" \
  2>/dev/null | sed -n 's/.*Overall exposure level for peerstored.service: \([0-9.]*\).*/\1/p')
if [ -n "$level" ] && awk "BEGIN { exit !($level <= 2.0) }"; then
  ok "systemd-analyze security: exposure $level (at most 2.0)"
else
  not_ok "systemd-analyze security: exposure '$level'"
fi
grep -q '^Type=notify$' "$dir/peerstored.service" &&
  ok "the service is Type=notify" || not_ok "Type=notify missing"
# The socket unit's path is the one the service binds, and the library
# and the CLI use, when nothing else is said.
want=$("${PEERSTORE_CLI:-../cli/peerstore}" --help |
  grep -o '/run/[^ )]*\.sock' | head -1)
got=$(sed -n 's/^ListenStream=//p' "$dir/peerstored.socket")
[ "$got" = "$want" ] && grep -q -- "--socket $want" "$dir/peerstored.service" &&
  ok "socket unit, service and default path agree ($got)" ||
  not_ok "socket path: unit '$got', default '$want'"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
