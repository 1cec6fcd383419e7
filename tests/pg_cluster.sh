#!/bin/sh
# pg_cluster.sh - a throwaway PostgreSQL server for the tests.
#
#   pg_cluster.sh start DIR     initdb in DIR/data, start it: Unix socket in
#                               DIR only, no TCP, fsync off (on with
#                               PG_FSYNC=on, as the benchmark runs it)
#   pg_cluster.sh stop DIR      stop it (fast: ends sessions)
#   pg_cluster.sh kill DIR      stop it as a crash would (immediate)
#   pg_cluster.sh restart DIR   start it again after stop/kill
#   pg_cluster.sh createdb DIR NAME
#   pg_cluster.sh destroy DIR   stop it if running, remove DIR
#
# The binaries come from $PG_BINDIR, else the newest
# /usr/lib/postgresql/*/bin (Debian), else PATH.  initdb refuses to run as
# root, so as root the server runs as the postgres user.  Exit 77, with
# the reason on stderr, when PostgreSQL is not installed.
set -u
action=$1
dir=$2

bindir=${PG_BINDIR:-}
if [ -z "$bindir" ]; then
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
    [ -x "$d/initdb" ] && bindir=$d
  done
fi
if [ -z "$bindir" ] && command -v initdb >/dev/null 2>&1; then
  bindir=$(dirname "$(command -v initdb)")
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
  echo "PostgreSQL server binaries not found (no initdb/pg_ctl in" \
       "\$PG_BINDIR, /usr/lib/postgresql/*/bin or PATH; Debian:" \
       "apt-get install postgresql)" >&2
  exit 77
fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_start() {
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-k $dir -c listen_addresses= -c fsync=${PG_FSYNC:-off} -c max_connections=50" \
    start >/dev/null || { cat "$dir/log" >&2; exit 1; }
}

case $action in
start)
  mkdir -p "$dir" || exit 1
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || {
      echo "running as root and there is no postgres user to run" \
           "PostgreSQL as" >&2; exit 77; }
    chown postgres "$dir" || exit 1
  fi
  as_pg "$bindir/initdb" -D "$dir/data" -A trust -U postgres --no-sync \
    -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  pg_start
  ;;
restart)
  pg_start
  ;;
stop)
  as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  ;;
kill)
  as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
  ;;
createdb)
  as_pg "$bindir/createdb" -h "$dir" -U postgres "$3"
  ;;
destroy)
  [ -f "$dir/data/postmaster.pid" ] &&
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
  rm -rf "$dir"
  ;;
*)
  echo "usage: pg_cluster.sh start|stop|kill|restart|createdb|destroy DIR" >&2
  exit 2
  ;;
esac
