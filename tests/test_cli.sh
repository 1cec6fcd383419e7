#!/bin/sh
# test_cli.sh - drives the peerstore and peerstored binaries as a user or a
# shell script would, checking output and exit codes.
set -u

PEERSTORED=${PEERSTORED:-../service/peerstored}
CLI=${PEERSTORE_CLI:-../cli/peerstore}
dir=$(mktemp -d "${TMPDIR:-/tmp}/peerstore-cli-XXXXXX")
sock="$dir/sock"
pass=0
fail=0
svc=

cleanup() {
  [ -n "$svc" ] && kill "$svc" 2>/dev/null && wait "$svc" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

ok() { pass=$((pass + 1)); echo "ok - $1"; }
not_ok() { fail=$((fail + 1)); echo "not ok - $1"; }

# check NAME EXPECTED_RC EXPECTED_STDOUT -- command...
check() {
  name=$1 want_rc=$2 want_out=$3
  shift 3
  out=$("$@" 2>"$dir/err")
  rc=$?
  if [ "$rc" = "$want_rc" ] && [ "$out" = "$want_out" ]; then
    ok "$name"
  else
    not_ok "$name (rc $rc, want $want_rc)"
    printf '  got:  %s\n  want: %s\n  stderr: %s\n' "$out" "$want_out" \
      "$(cat "$dir/err")"
  fi
}

svc_env= # NAME=VALUE words for the service's environment only
start_service() {
  rm -f "$dir/ready"
  mkfifo "$dir/ready"
  # shellcheck disable=SC2086
  env $svc_env "$PEERSTORED" --socket "$sock" --log-level warn "$@" \
    --ready-fd 3 3>"$dir/ready" 2>>"$dir/service.log" &
  svc=$!
  read -r line <"$dir/ready"
  [ "$line" = READY ] || { echo "service did not start"; cat "$dir/service.log"; exit 1; }
}

P1=0000000000000000000000000000000000000000000000000000000000000001
P1B32=000000000000000000000000000000000000000000000000000G
P2=$(printf 'ab%.0s' $(seq 32))
ps() { "$CLI" -S "$sock" "$@"; }

# --- without a service -----------------------------------------------------
check "no service: exit 3" 3 "" ps stats
check "usage: no command" 2 "" "$CLI"
check "usage: unknown command" 2 "" "$CLI" frobnicate
check "usage: bad peer" 2 "" "$CLI" get -s ss -p nothex -k k
check "usage: store without value" 2 "" ps store -s ss -p $P1 -k k
check "usage: bad expiry" 2 "" ps store -s ss -p $P1 -k k -e 5x v
check "peer: base32 and hex" 0 "$P1B32
$P1" "$CLI" peer -p $P1
check "peer: base32 parses back" 0 "$P1B32
$P1" "$CLI" peer -p "$(echo $P1B32 | tr 'G' 'g')"
"$CLI" --help | grep -q "Exit status" && ok "help lists exit codes" || not_ok "help"

# --- with a service ----------------------------------------------------------
start_service
check "stats: empty" 0 "0" sh -c "'$CLI' -S '$sock' stats | awk '\$1==\"records\"{print \$2}'"
check "store text" 0 "" ps store -s ss -p $P1 -k addr "tcp 1.2.3.4"
check "store multiple" 0 "" ps store -s ss -p $P1 -k addr "udp 5.6.7.8"
check "get both, oldest first" 0 "tcp 1.2.3.4
udp 5.6.7.8" ps get -s ss -p $P1 -k addr
check "store replace" 0 "" ps store -r -s ss -p $P1 -k addr "quic"
check "get after replace" 0 "quic" ps get -s ss -p $P1 -k addr
check "get missing: exit 1" 1 "" ps get -s ss -p $P1 -k nothing
check "store hex" 0 "" ps store -s ss -p $P2 -k bin --hex 00ff10
check "get hex" 0 "00ff10" ps get -x -s ss -p $P2 -k bin
printf 'from\nfile' >"$dir/value"
check "store file" 0 "" ps store -s ss -p $P2 -k file -f "$dir/value"
check "store stdin" 0 "" sh -c "printf 'piped' | '$CLI' -S '$sock' store -s ss -p $P2 -k stdin -"
check "get stdin value" 0 "piped" ps get -s ss -p $P2 -k stdin
check "iterate by peer" 0 "bin
file
stdin" sh -c "'$CLI' -S '$sock' iterate -s ss -p $P2 | cut -f2"
check "iterate json" 0 '{"subsystem":"ss","peer":"'$P1B32'","peer_hex":"'$P1'","key":"addr","value":"quic","value_hex":"71756963","size":4,"expiry":null,"revision":N,"writer":'"$(id -u)"'}' \
  sh -c "'$CLI' -S '$sock' iterate --json -s ss -k addr | sed 's/\"revision\":[0-9][0-9]*/\"revision\":N/'"
check "json binary value" 0 '"value_hex":"00ff10"' sh -c "'$CLI' -S '$sock' iterate -j -s ss -k bin | grep -o '\"value_hex\":\"[0-9a-f]*\"'"
# --json lines are valid UTF-8 whatever the bytes: a key and a value that
# are not UTF-8 come as hex only; UTF-8 text comes as text.
ps store -s ss -p $P1 -k "$(printf 'k\303')" --hex fffe41 >/dev/null
ps store -s ss -p $P1 -k utf8 "$(printf 'gr\303\274\303\237e')" >/dev/null
ps iterate -j -s ss >"$dir/json.out"
iconv -f UTF-8 -t UTF-8 "$dir/json.out" >/dev/null 2>&1 && ok "json: every line is UTF-8" || not_ok "json: invalid UTF-8 in output"
check "json: a key that is not UTF-8 as key_hex only" 0 '"key_hex":"6bc3","value_hex":"fffe41"' sh -c "grep -o '\"key_hex\":\"6bc3\",\"value_hex\":\"[0-9a-f]*\"' '$dir/json.out'"
check "json: UTF-8 text as text" 0 "1" sh -c "grep -c '\"value\":\"$(printf 'gr\303\274\303\237e')\"' '$dir/json.out'"
check "expired record hidden" 0 "" ps store -s ss -p $P1 -k old -e @1 gone
check "expired not returned" 1 "" ps get -s ss -p $P1 -k old
check "relative expiry" 0 "" ps store -s ss -p $P1 -k soon -e 1h soon
check "relative expiry in json" 0 "1" sh -c "'$CLI' -S '$sock' get -j -s ss -p $P1 -k soon | grep -c '\"expiry\":[0-9]'"
# watch: started in the background, then a store from another process.
ps watch -s ss -k w -n 2 >"$dir/watch.out" &
wpid=$!
# The watch is registered once the service counts it: ask until it does
# (or the watcher has died).
until [ "$(ps stats | awk '$1=="watches"{print $2}')" = 1 ]; do
  kill -0 $wpid 2>/dev/null || break
done
ps store -s ss -p $P1 -k w first >/dev/null
ps store -s ss -p $P2 -k w second >/dev/null
wait $wpid
check "watch saw both stores" 0 "first
second" cut -f5 "$dir/watch.out"
check "watch lines lead with the event and its revision" 0 "store
store" sh -c "cut -f1 '$dir/watch.out'"
# The change stream: a snapshot, SYNC, then a removal and a store.
ps store -s cw -p $P1 -k a one >/dev/null
ps watch -s cw --snapshot --removals --json -n 3 >"$dir/cw.out" &
wpid=$!
until [ "$(ps stats | awk '$1=="watches"{print $2}')" = 1 ]; do
  kill -0 $wpid 2>/dev/null || break
done
ps remove -s cw -k a >/dev/null
ps store -s cw -p $P1 -k b two >/dev/null
wait $wpid
check "watch --snapshot --removals: events in order" 0 "store
sync
remove
store" sh -c "grep -o '\"event\":\"[a-z]*\"' '$dir/cw.out' | cut -d'\"' -f4"
check "watch json: a removal names the store it removed" 0 "1" sh -c "grep '\"event\":\"remove\"' '$dir/cw.out' | grep -c '\"record_revision\":'"
rev_one=$(sed -n 1p "$dir/cw.out" | grep -o '"revision":[0-9]*' | cut -d: -f2)
check "watch --from REV: the stores after it (no removals asked)" 0 "two" \
  sh -c "'$CLI' -S '$sock' watch -s cw --from $rev_one -n 1 | cut -f5"
check "usage: bad --from" 2 "" ps watch -s cw --from 0
check "stats: the history's bounds" 0 "2" sh -c "'$CLI' -S '$sock' stats | grep -c '^history_\(first\|last\)'"
check "remove by key" 0 "2" ps remove -s ss -k w
check "remove json" 0 '{"removed":1}' ps remove -j -s ss -p $P2 -k bin
check "oversize value refused: exit 4" 4 "" sh -c "head -c 1048577 /dev/zero | '$CLI' -S '$sock' store -s ss -p $P1 -k big -"
grep -q "value larger" "$dir/err" && ok "oversize error is named" || not_ok "oversize error is named"
check "value at the limit" 0 "1048576" sh -c "head -c 1048576 /dev/zero | '$CLI' -S '$sock' store -s ss -p $P1 -k big - && '$CLI' -S '$sock' iterate -j -s ss -k big | grep -o '\"size\":[0-9]*' | cut -d: -f2"

# --- batch: JSON lines, all or nothing -----------------------------------------
printf '%s\n' \
  '{"op":"store","subsystem":"bt","peer":"'$P1'","key":"a","value":"one","replace":true}' \
  '' \
  '{"op":"store","subsystem_hex":"6274","peer_hex":"'$P2'","key_hex":"62","value_hex":"00ff","expiry":"1h"}' \
  >"$dir/b1.jsonl"
first=$(ps batch --file "$dir/b1.jsonl")
[ -n "$first" ] && [ "$first" -gt 0 ] && ok "batch: prints its first revision" || not_ok "batch: first revision '$first'"
check "batch: the stores, in order, on consecutive revisions" 0 "$first one
$((first + 1)) 00ff" sh -c "'$CLI' -S '$sock' iterate -s bt | awk -F'\t' '{print \$5, (\$3 ~ /^0x/ ? substr(\$3, 3) : \$3)}'"
rev_a=$(ps get -j -s bt -p $P1 -k a | grep -o '"revision":[0-9]*' | cut -d: -f2)
echo '{"op":"require","subsystem":"bt","peer":"'$P1'","key":"a","revision":'"$rev_a"'}
{"op":"store","subsystem":"bt","peer":"'$P1'","key":"a","value":"two","replace":true}' >"$dir/cas.jsonl"
check "batch: compare-and-set on the revision get --json shows" 0 '{"applied":2,"first_revision":'$((rev_a + 3))'}' \
  sh -c "'$CLI' -S '$sock' -j batch <'$dir/cas.jsonl'"
check "batch: the same again is a conflict (exit 6)" 6 "" ps batch --file "$dir/cas.jsonl"
grep -q "condition of the batch does not hold" "$dir/err" && ok "batch: conflict named" || not_ok "batch: conflict text: $(cat "$dir/err")"
check "batch: the value is the winner's" 0 "two" ps get -s bt -p $P1 -k a
printf '%s\n' '{"op":"remove","subsystem":"bt"}' 'not json' >"$dir/bad.jsonl"
check "batch: a bad line sends nothing (exit 2)" 2 "" ps batch --file "$dir/bad.jsonl"
grep -q "line 2: malformed JSON" "$dir/err" && ok "batch: the bad line is named" || not_ok "batch: bad line text: $(cat "$dir/err")"
check "batch: ... and nothing was removed" 0 "two" ps get -s bt -p $P1 -k a
check "batch: store without a key (exit 2)" 2 "" sh -c "echo '{\"op\":\"store\",\"subsystem\":\"bt\",\"peer\":\"$P1\",\"value\":\"x\"}' | '$CLI' -S '$sock' batch"
check "batch: unknown op (exit 2)" 2 "" sh -c "echo '{\"op\":\"frob\",\"subsystem\":\"bt\"}' | '$CLI' -S '$sock' batch"
check "batch: the service's own subsystem is not writable (exit 4)" 4 "" sh -c "echo '{\"op\":\"remove\",\"subsystem\":\"peerstore.batch\"}' | '$CLI' -S '$sock' batch"
check "batch: a remove-only batch that matched nothing" 0 "0" sh -c "echo '{\"op\":\"remove\",\"subsystem\":\"nothing-here\"}' | '$CLI' -S '$sock' batch"

# --- export and import ------------------------------------------------------
# 100,000 records with binary values (every byte value, NULs included),
# several values under some keys, expiries near and far: imported, exported,
# imported into a second service, exported again - the same records; the
# expired ones skipped and counted.
awk -v p1="$P1" 'BEGIN {
  srand(7)
  for (i = 0; i < 100000; i++) {
    v = ""
    for (j = 0; j < 1 + i % 40; j++) v = v sprintf("%02x", int(rand() * 256))
    e = (i % 10 == 0) ? "4102444800000000" : "null"
    printf "{\"subsystem\":\"big%d\",\"peer_hex\":\"%064x\",\"key\":\"k%d\",\"value_hex\":\"%s\",\"expiry\":%s}\n", i % 3, i % 977, i % 5003, v, e
  }
  printf "{\"subsystem\":\"big0\",\"peer\":\"%s\",\"key\":\"gone\",\"value\":\"x\",\"expiry\":1000}\n", p1
}' >"$dir/gen.jsonl"
batches0=$(ps stats | awk '$1=="batches"{print $2}')
check "import: 100,000 records, the expired one skipped" 0 "imported 100000 records in 100 batches; skipped 1 expired" ps import --file "$dir/gen.jsonl"
batches1=$(ps stats | awk '$1=="batches"{print $2}')
[ $((batches1 - batches0)) = 100 ] && ok "import: atomic batches of 1,000, each applied once" || not_ok "import: $((batches1 - batches0)) batches applied"
ps export -s big0 -s big1 -s big2 >"$dir/exp1"
[ "$(wc -l <"$dir/exp1")" = 100000 ] && ok "export: every record, one line each" || not_ok "export: $(wc -l <"$dir/exp1") lines"
sock_a=$sock svc_a=$svc
sock="$dir/sock2"; svc=
start_service
ps import <"$dir/exp1" >/dev/null && ok "import: the export into a second service" || not_ok "import into the second service"
ps export -s big0 -s big1 -s big2 >"$dir/exp2"
# Revisions are each service's own; everything else must be the same.
sed 's/,"revision":[0-9]*//' "$dir/exp1" >"$dir/exp1.cmp"
sed 's/,"revision":[0-9]*//' "$dir/exp2" >"$dir/exp2.cmp"
cmp -s "$dir/exp1.cmp" "$dir/exp2.cmp" && ok "export, import, export: the same records, byte for byte" || not_ok "round trip differs: $(diff "$dir/exp1.cmp" "$dir/exp2.cmp" | head -3)"
grep -q '"value_hex":"00' "$dir/exp2" && ok "export: binary values as hex" || not_ok "no binary value seen"
kill -TERM $svc; wait $svc
sock=$sock_a svc=$svc_a
# Large values: a batch is cut at 1 MiB as well as 1,000 records, within
# the service's batch_max_bytes (4 MiB), however big the records are.
awk -v p1="$P1" 'BEGIN {
  v = ""; for (j = 0; j < 5000; j++) v = v "ab"
  for (i = 0; i < 1500; i++)
    printf "{\"subsystem\":\"large\",\"peer\":\"%s\",\"key\":\"k%d\",\"value_hex\":\"%s\"}\n", p1, i, v
}' >"$dir/large.jsonl"
check "import: 1,500 values of 5,000 bytes go in batches of 1 MiB" 0 "imported 1500 records in 8 batches; skipped 0 expired" ps import --file "$dir/large.jsonl"
check "usage: import takes no -s (each line names its record)" 2 "" ps import -s ss --file "$dir/large.jsonl"
# Output that cannot be written is an error, not a truncated success; a
# reader that goes away is not.
if [ -w /dev/full ]; then
  ps export -s big0 >/dev/full 2>"$dir/err"
  [ $? = 7 ] && grep -q "cannot write the output" "$dir/err" && ok "export to a full disk: exit 7, said" || not_ok "export to /dev/full: $(cat "$dir/err")"
  ps stats --prometheus >/dev/full 2>/dev/null
  [ $? = 7 ] && ok "stats --prometheus to a full disk: exit 7" || not_ok "stats to /dev/full did not fail"
fi
( ps export -s big0 2>"$dir/err"; echo $? >"$dir/rc" ) | head -1 >/dev/null
[ "$(cat "$dir/rc")" = 0 ] && ok "export into a pipe closed early: 0" || not_ok "export into a closed pipe: exit $(cat "$dir/rc"): $(cat "$dir/err")"
check "usage: export needs -s (exit 2)" 2 "" ps export
check "usage: more than one -s is for export (exit 2)" 2 "" ps iterate -s a -s b
printf '%s\n' '{"op":"remove","subsystem":"big0"}' >"$dir/notrec.jsonl"
check "import: an operation that is not a record (exit 2)" 2 "" ps import --file "$dir/notrec.jsonl"
grep -q "line 1: import takes records" "$dir/err" && ok "import: the line is named" || not_ok "import: $(cat "$dir/err")"

# --- the service's own behaviour ---------------------------------------------
mode=$(stat -c %a "$sock")
[ "$mode" = 600 ] && ok "socket is owner-only" || not_ok "socket mode $mode"
"$PEERSTORED" --socket "$sock" 2>"$dir/second.log"
rc=$?
[ $rc = 1 ] && grep -q "another service" "$dir/second.log" && ok "live socket not stolen" || not_ok "live socket stolen (rc $rc)"
kill -TERM $svc
wait $svc
rc=$?
svc=
[ $rc = 0 ] && ok "SIGTERM: exit 0" || not_ok "SIGTERM: exit $rc"
[ ! -e "$sock" ] && ok "socket removed at exit" || not_ok "socket left behind"

# A stale socket from a killed service is replaced.
start_service
kill -KILL $svc
wait $svc 2>/dev/null
svc=
[ -S "$sock" ] && ok "killed service leaves its socket" || not_ok "no stale socket"
start_service
check "stale socket replaced" 0 "" ps store -s ss -p $P1 -k k v
kill -TERM $svc; wait $svc; svc=

# Config file, overridden by flags; bad plugin named clearly.
cat >"$dir/conf.ini" <<CONF
[peerstored]
socket = $dir/from-config.sock
max_value_size = 10
socket_mode = 0660
CONF
start_service -c "$dir/conf.ini"
check "config: max_value_size" 4 "" ps store -s ss -p $P1 -k k 12345678901
check "config: socket overridden by flag" 0 "" ps store -s ss -p $P1 -k k 1234567890
mode=$(stat -c %a "$sock")
[ "$mode" = 660 ] && ok "config: socket_mode" || not_ok "config: socket_mode $mode"
kill -TERM $svc; wait $svc; svc=
"$PEERSTORED" --socket "$sock" --plugin nosuch --plugin-dir "$dir" 2>"$dir/plugin.log"
rc=$?
[ $rc = 1 ] && grep -q "peerstore_plugin_nosuch.so" "$dir/plugin.log" && grep -q "$dir" "$dir/plugin.log" \
  && ok "missing plugin: names file and place" || not_ok "missing plugin (rc $rc): $(cat "$dir/plugin.log")"
echo "not a plugin" >"$dir/peerstore_plugin_broken.so"
"$PEERSTORED" --socket "$sock" --plugin broken --plugin-dir "$dir" 2>"$dir/plugin.log"
rc=$?
[ $rc = 1 ] && grep -q "cannot load" "$dir/plugin.log" && ok "broken plugin refused" || not_ok "broken plugin (rc $rc)"
# Plugins loaded by name from --plugin-dir, PEERSTORE_PLUGIN_PATH, or path.
plugins=${PEERSTORE_TEST_PLUGINS:-.libs}
start_service --plugin memtest --plugin-dir "$plugins"
check "plugin by name from --plugin-dir" 0 "v" sh -c "'$CLI' -S '$sock' store -s ss -p $P1 -k k v && '$CLI' -S '$sock' get -s ss -p $P1 -k k"
kill -TERM $svc; wait $svc; svc=
PEERSTORE_PLUGIN_PATH="/nonexistent:$plugins" start_service --plugin memtest
check "plugin by name from PEERSTORE_PLUGIN_PATH" 0 "" ps store -s ss -p $P1 -k k v
kill -TERM $svc; wait $svc; svc=
start_service --plugin "$plugins/peerstore_plugin_memtest.so"
check "plugin by path" 0 "" ps store -s ss -p $P1 -k k v
kill -TERM $svc; wait $svc; svc=
"$PEERSTORED" --socket "$sock" --plugin badabi --plugin-dir "$plugins" 2>"$dir/plugin.log"
rc=$?
[ $rc = 1 ] && grep -q "plugin ABI 2, this service needs 3 (rebuild the plugin" "$dir/plugin.log" && ok "an ABI 2 plugin is refused, naming both ABIs" || not_ok "plugin ABI (rc $rc): $(cat "$dir/plugin.log")"
[ ! -e "$sock" ] && ok "failed start leaves no socket" || not_ok "failed start left a socket"
# A client whose credentials cannot be read (SO_PEERCRED failing, through
# a preloaded shim) is refused, not taken for root.
shim="LD_PRELOAD=$plugins/shim.so ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
svc_env="$shim PEERSTORE_SHIM_NO_PEERCRED=1"
start_service
svc_env=
check "no credentials: refused (exit 4)" 4 "" ps stats
grep -q "cannot read its credentials" "$dir/service.log" && ok "no credentials: logged" || not_ok "no credentials: not logged"
kill -TERM $svc; wait $svc; svc=
# A value of exactly the largest size any service takes can be read from a
# file; one byte more is refused before anything is sent.
start_service -o max_value_size=64M
truncate -s 64M "$dir/max.bin"
check "store --file of exactly 64 MiB" 0 "" ps store -s ss -p $P1 -k max --file "$dir/max.bin"
check "  ... and it is all there" 0 "67108864" sh -c "'$CLI' -S '$sock' iterate -j -s ss -k max | grep -o '\"size\":[0-9]*' | cut -d: -f2"
truncate -s 67108865 "$dir/max.bin"
check "store --file of 64 MiB + 1: refused (exit 2)" 2 "" ps store -s ss -p $P1 -k max --file "$dir/max.bin"
grep -q "File too large" "$dir/err" && ok "  ... saying why" || not_ok "  ... no reason: $(cat "$dir/err")"
rm -f "$dir/max.bin"
kill -TERM $svc; wait $svc; svc=
# The socket file: bound where nobody can redirect it, in a directory
# nobody else can write, and removed at shutdown only if it is still ours.
echo victim >"$dir/victim"; chmod 0644 "$dir/victim"
# (timeout: a service that wrongly starts would otherwise run forever)
timeout 60 env $shim PEERSTORE_SHIM_SWAP="$dir/victim" "$PEERSTORED" --socket "$sock" 2>"$dir/swap.log"
rc=$?
[ "$(stat -c %a "$dir/victim")" = 644 ] && ok "socket: a symlink swapped in after bind is not followed" || not_ok "socket: victim's mode changed to $(stat -c %a "$dir/victim") (rc $rc)"
[ $rc = 1 ] && [ ! -e "$sock" ] && ok "socket: swapped socket refused, nothing left" || not_ok "socket: swap (rc $rc): $(cat "$dir/swap.log")"
mkdir "$dir/shared"; chmod 0777 "$dir/shared"
timeout 60 "$PEERSTORED" --socket "$dir/shared/s" 2>"$dir/shared.log"
rc=$?
[ $rc = 1 ] && grep -q "writable by others and not sticky" "$dir/shared.log" && [ ! -e "$dir/shared/s" ] \
  && ok "socket: a directory others may write is refused" || not_ok "socket: shared dir (rc $rc): $(cat "$dir/shared.log")"
chmod 1777 "$dir/shared"
sock_saved=$sock; sock="$dir/shared/s"
start_service
check "socket: a sticky shared directory is fine" 0 "" sh -c "'$CLI' -S '$sock' stats >/dev/null"
# Replaced while the service runs: shutdown leaves the newcomer alone.
mv "$sock" "$dir/shared/moved"; echo newcomer >"$sock"
kill -TERM $svc; wait $svc; svc=
[ "$(cat "$sock" 2>/dev/null)" = newcomer ] && ok "socket: shutdown removes only its own socket" || not_ok "socket: shutdown removed what replaced its socket"
rm -f "$sock" "$dir/shared/moved"; sock=$sock_saved
# Quotas: refused with a clear message, logged with subsystem and uid,
# their use in stats; a [quota] line that says nothing sensible stops the
# service at start.
printf '[quota]\nq = 2 records\n' >"$dir/quota.ini"
start_service -c "$dir/quota.ini"
ps store -s q -p $P1 -k a 1 && ps store -s q -p $P1 -k b 2
check "quota: the third record is refused (exit 4)" 4 "" ps store -s q -p $P1 -k c 3
grep -q "quota would be passed" "$dir/err" && ok "quota: refusal named" || not_ok "quota: refusal text: $(cat "$dir/err")"
grep -q "quota of subsystem 'q' (2 records, 0 bytes) refuses a write by uid $(id -u)" "$dir/service.log" && ok "quota: refusal logged with subsystem and uid" || not_ok "quota: no log line"
check "quota: a replace fits" 0 "" ps store -r -s q -p $P1 -k a one
check "quota: use in stats" 0 "quota.q.records	2" sh -c "'$CLI' -S '$sock' stats | grep '^quota.q.records'"
# stats --prometheus: the text exposition format - each family's HELP and
# TYPE once, before its samples; counters end in _total; every counter
# this service has is known (none untyped); a quota's subsystem a label.
ps stats --prometheus >"$dir/prom"
ps stats >"$dir/plain"
awk '
  /^# HELP peerstore_[a-z0-9_]+ ./ { help[$3]++; next }
  /^# TYPE peerstore_[a-z0-9_]+ (counter|gauge)$/ {
    if (seen[$3]++ || !help[$3]) bad = bad " type:" $3; cur = $3
    if ($4 == "counter" && $3 !~ /_total$/) bad = bad " counter-name:" $3
    next }
  /^peerstore_[a-z0-9_]+(\{subsystem="[^"]*"\})? [0-9]+$/ {
    name = $1; sub(/\{.*/, "", name)
    if (name != cur) bad = bad " sample-out-of-family:" name
    samples++; next }
  { bad = bad " line:" $0 }
  END { if (bad != "" || samples < 30) { print "bad" bad; exit 1 } }
' "$dir/prom" >"$dir/prom.bad" && ok "stats --prometheus: well-formed, every family typed" || not_ok "stats --prometheus: $(cat "$dir/prom.bad")"
check "stats --prometheus: a counter, and its value" 0 "peerstore_stores_total $(awk '$1=="stores"{print $2}' "$dir/plain")" grep '^peerstore_stores_total ' "$dir/prom"
check "stats --prometheus: a gauge" 0 "# TYPE peerstore_records gauge" grep '^# TYPE peerstore_records ' "$dir/prom"
check "stats --prometheus: the quota as a label" 0 'peerstore_quota_records{subsystem="q"} 2' grep '^peerstore_quota_records' "$dir/prom"
check "stats --prometheus: uptime in seconds" 0 1 grep -c '^peerstore_uptime_seconds ' "$dir/prom"
check "usage: --prometheus is for stats (exit 2)" 2 "" ps get -s q -p $P1 -k a --prometheus
kill -TERM $svc; wait $svc; svc=
printf '[quota]\nq = plenty\n' >"$dir/quota.ini"
"$PEERSTORED" --socket "$sock" -c "$dir/quota.ini" 2>"$dir/err"
[ $? = 1 ] && grep -q "\[quota\] q = plenty" "$dir/err" && ok "quota: a bad line stops the start, named" || not_ok "quota: bad line: $(cat "$dir/err")"
# The sqlite plugin, when it was built.
sqlite_dir=${PEERSTORE_PLUGIN_PATH:-../plugins/.libs}
if [ -f "$sqlite_dir/peerstore_plugin_sqlite.so" ]; then
  export PEERSTORE_PLUGIN_PATH="$sqlite_dir"
  db="$dir/data.db"
  start_service --plugin sqlite --database "$db"
  check "sqlite: store" 0 "" ps store -s ss -p $P1 -k k persisted
  kill -TERM $svc; wait $svc; rc=$?; svc=
  [ $rc = 0 ] && ok "sqlite: clean shutdown" || not_ok "sqlite: shutdown exit $rc"
  start_service --plugin sqlite --database "$db"
  check "sqlite: value survives a restart" 0 "persisted" ps get -s ss -p $P1 -k k
  kill -TERM $svc; wait $svc; svc=
  printf '[plugin]\nread_only = yes\n' >"$dir/ro.ini"
  start_service --plugin sqlite --database "$db" -c "$dir/ro.ini"
  check "sqlite read-only: reads" 0 "persisted" ps get -s ss -p $P1 -k k
  check "sqlite read-only: store refused (exit 4)" 4 "" ps store -s ss -p $P1 -k k other
  grep -q "read-only" "$dir/err" && ok "sqlite read-only: reason printed" || not_ok "sqlite read-only: reason"
  kill -TERM $svc; wait $svc; svc=
  "$PEERSTORED" --socket "$sock" --plugin sqlite --database "$dir/no/such/dir/x.db" 2>"$dir/open.log"
  rc=$?
  [ $rc = 1 ] && grep -q "$dir/no/such/dir/x.db" "$dir/open.log" && ok "sqlite: unopenable file named, exit 1" || not_ok "sqlite: unopenable (rc $rc): $(cat "$dir/open.log")"
  head -c 8192 /dev/urandom >"$dir/garbage.db"
  cp "$dir/garbage.db" "$dir/garbage.orig"
  "$PEERSTORED" --socket "$sock" --plugin sqlite --database "$dir/garbage.db" 2>"$dir/open.log"
  rc=$?
  [ $rc = 1 ] && grep -q "garbage.db" "$dir/open.log" && cmp -s "$dir/garbage.db" "$dir/garbage.orig" \
    && ok "sqlite: not-a-database refused, file untouched" || not_ok "sqlite: garbage file (rc $rc): $(cat "$dir/open.log")"
  # backup: a copy the plugin opens, the same records and revisions; FILE
  # replaced only by a whole copy, and nothing left behind on failure.
  start_service --plugin sqlite --database "$db"
  i=0
  while [ $i -lt 50 ]; do
    ps store -s bk -p "$(printf '%064x' $i)" -k "k$((i % 3))" --hex "00ff$(printf '%04x' $i)" || break
    i=$((i + 1))
  done
  ps export -s bk -s ss >"$dir/bk.orig"
  echo previous >"$dir/bk.db"
  rev=$(ps stats | awk '$1=="revision"{print $2}')
  ps backup "$dir/bk.db" >"$dir/bk.out"
  check "backup: says the revision and the copy's size" 0 "backup of revision $rev, $(stat -c %s "$dir/bk.db") bytes, in $dir/bk.db" cat "$dir/bk.out"
  [ "$(stat -c %a "$dir/bk.db")" = 600 ] && ok "backup: the copy is the owner's only" || not_ok "backup: mode $(stat -c %a "$dir/bk.db")"
  # (Each copy has a history id of its own, so two are not byte-equal.)
  check "backup: - writes a copy to standard output" 0 "$(stat -c %s "$dir/bk.db") SQLite format 3" \
    sh -c "'$CLI' -S '$sock' backup - 2>/dev/null >'$dir/bk.stdout' && echo \$(stat -c %s '$dir/bk.stdout') \$(head -c 15 '$dir/bk.stdout')"
  check "backup: to a full output, exit 7" 7 "" sh -c "'$CLI' -S '$sock' backup - >/dev/full"
  # (perl, which Debian always has: stdout a pipe whose reader is gone)
  check "backup: a reader that went away is an error too (exit 7)" 7 "" \
    perl -e 'pipe(R, W) or die; close R; open(STDOUT, ">&", \*W) or die; exec @ARGV' "$CLI" -S "$sock" backup -
  grep -q "cannot write the output: Broken pipe" "$dir/err" && ok "  ... saying so" || not_ok "  ... $(cat "$dir/err")"

  check "usage: backup needs FILE" 2 "" ps backup
  check "usage: backup takes no -s" 2 "" ps backup -s bk "$dir/x.db"
  check "backup: a file that cannot be made, exit 7" 7 "" ps backup "$dir/no/such/dir/x.db"
  # Killed while it waits (the service stopped): no temporary left.
  kill -STOP $svc
  "$CLI" -S "$sock" backup "$dir/term.db" 2>/dev/null &
  cli_pid=$!
  i=0
  while [ -z "$(ls "$dir" | grep '^term\.db\.')" ] && [ $i -lt 500 ]; do
    sleep 0.01; i=$((i + 1))
  done
  kill -TERM $cli_pid; wait $cli_pid; rc=$?
  kill -CONT $svc
  [ $rc = 143 ] && [ -z "$(ls "$dir" | grep '^term\.db')" ] && ok "backup: SIGTERM leaves no temporary (exit 143)" || not_ok "backup: SIGTERM (rc $rc): $(ls "$dir")"
  kill -TERM $svc; wait $svc; svc=
  start_service --plugin sqlite --database "$db" -o backup_dir="$dir/no/such/dir"
  check "backup: backup_dir that cannot take the copy, exit 4" 4 "" ps backup "$dir/bd.db"
  grep -q "cannot make a file for the copy in $dir/no/such/dir: No such file or directory" "$dir/err" && ok "  ... naming it" || not_ok "  ... $(cat "$dir/err")"
  kill -TERM $svc; wait $svc; svc=
  start_service --plugin sqlite --database "$dir/bk.db"
  ps export -s bk -s ss >"$dir/bk.copy"
  check "backup: the copy opens with the same records and revisions" 0 "" cmp "$dir/bk.orig" "$dir/bk.copy"
  kill -TERM $svc; wait $svc; svc=
  start_service
  check "backup: refused by the memory plugin, exit 4" 4 "" ps backup "$dir/bk.db"
  grep -q "the memory plugin keeps nothing on disk to copy (peerstore export" "$dir/err" && ok "backup: the refusal says why" || not_ok "backup: refusal text: $(cat "$dir/err")"
  [ "$(ls "$dir" | grep -c '^bk\.db\.')" = 0 ] && [ -s "$dir/bk.db" ] && ok "backup: a failed backup leaves FILE as it was, no temporary" || not_ok "backup: leftovers: $(ls "$dir")"
  kill -TERM $svc; wait $svc; svc=
fi

# Access control: needs a second user, so only as root with setpriv.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
  # Everything the other user runs must be reachable by it.
  chmod 711 "$dir"
  as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
  as_nobody "$CLI" --help >/dev/null 2>&1 || { echo "# nobody cannot run $CLI; skipping access tests"; nobody_ok=no; }
  if [ "${nobody_ok:-yes}" = yes ]; then
    cat >"$dir/acl.ini" <<CONF
[peerstored]
socket_mode = 0666
socket_group = nogroup
[write]
transport = self, @daemon
CONF
    start_service -c "$dir/acl.ini"
    [ "$(stat -c %G "$sock")" = nogroup ] && ok "socket_group applied" || not_ok "socket_group: $(stat -c %G "$sock")"
    check "acl: owner writes a guarded subsystem" 0 "" ps store -s transport -p $P1 -k k mine
    check "acl: other uid may not (exit 4)" 4 "" as_nobody "$CLI" -S "$sock" store -s transport -p $P1 -k k theirs
    grep -q "permission denied" "$dir/err" && ok "acl: refusal named" || not_ok "acl: refusal text: $(cat "$dir/err")"
    check "acl: other uid may not remove either" 4 "" as_nobody "$CLI" -S "$sock" remove -s transport
    check "acl: other uid reads" 0 "mine" as_nobody "$CLI" -S "$sock" get -s transport -p $P1 -k k
    check "acl: other uid writes an open subsystem" 0 "" as_nobody "$CLI" -S "$sock" store -s open -p $P1 -k k theirs
    check "acl: writer recorded" 0 '"writer":65534}' sh -c "'$CLI' -S '$sock' iterate -j -s open | grep -o '\"writer\":[0-9]*}'"
    grep -q "uid 65534 gid 65534 may not write subsystem 'transport'" "$dir/service.log" && ok "acl: refusal logged with uid and subsystem" || not_ok "acl: no log line"
    kill -TERM $svc; wait $svc; svc=
    start_service -o socket_mode=0666 -o allow_uids=self
    check "acl: admitted uid" 0 "" ps store -s s -p $P1 -k k v
    check "acl: other uid refused at connect (exit 4)" 4 "" as_nobody "$CLI" -S "$sock" stats
    grep -q "refusing uid 65534" "$dir/service.log" && ok "acl: connection refusal logged" || not_ok "acl: no connection log line"
    kill -TERM $svc; wait $svc; svc=
    start_service -o socket_mode=0666 -o allow_gids=nogroup
    check "acl: admitted by group" 0 "" as_nobody "$CLI" -S "$sock" store -s s -p $P1 -k k v
    mkdir -m 0777 "$dir/nb"
    check "acl: backup is not for every uid (exit 4)" 4 "" as_nobody "$CLI" -S "$sock" backup "$dir/nb/x.db"
    grep -q "backups are for root, the service's user and those backup_allow names (uid 65534" "$dir/err" && ok "acl: backup refusal named" || not_ok "acl: backup refusal: $(cat "$dir/err")"
    kill -TERM $svc; wait $svc; svc=
    start_service -o socket_mode=0666 -o backup_allow=nobody
    as_nobody "$CLI" -S "$sock" backup "$dir/nb/x.db" 2>"$dir/err"
    grep -q "memory plugin keeps nothing" "$dir/err" && ok "acl: backup_allow lets a uid ask" || not_ok "acl: backup_allow: $(cat "$dir/err")"
    kill -TERM $svc; wait $svc; svc=
  fi
fi

"$PEERSTORED" --bogus 2>/dev/null
[ $? = 1 ] && ok "service: bad flag exit 1" || not_ok "service: bad flag"

echo "$pass passed, $fail failed"
[ $fail = 0 ]
