#!/usr/bin/env bash
# A local PostgreSQL server for shared Optuna studies and the MLflow server's backend store.
#   scripts/postgres.sh start DIR [PORT]   initialise DIR once, start on 127.0.0.1:PORT, print the URL
#   scripts/postgres.sh stop DIR
# Databases `steerlab` (studies) and `mlflow` (tracking) are created; local connections only,
# no password (trust on loopback). PostgreSQL refuses to run as root: as root, the server runs
# as the `postgres` user (Debian's package creates it), so DIR must be reachable by that user.
set -euo pipefail
cmd=${1:?usage: postgres.sh start|stop DIR [PORT]}
dir=$(realpath -m "${2:?usage: postgres.sh start|stop DIR [PORT]}")
port=${3:-5433}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "postgres.sh: PostgreSQL is not installed (Debian: apt-get install postgresql)" >&2
  exit 2
fi
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
      chown postgres "$dir"
      runuser -u postgres -- test -w "$dir" || {
        echo "postgres.sh: $dir is not reachable by the postgres user; use e.g. /tmp/steerlab-pg" >&2
        exit 2
      }
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_owner "$bindir/initdb" -D "$dir/data" -U steerlab --auth=trust -E UTF8 >"$dir/initdb.log"
    fi
    if ! as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
    fi
    for db in steerlab mlflow; do
      as_owner "$bindir/psql" -h 127.0.0.1 -p "$port" -U steerlab -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 ||
        as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U steerlab "$db"
    done
    echo "postgresql+psycopg://steerlab@127.0.0.1:$port/steerlab"
    ;;
  stop)
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
    ;;
  *)
    echo "postgres.sh: unknown command $cmd (start|stop)" >&2
    exit 2
    ;;
esac
