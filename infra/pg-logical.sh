#!/usr/bin/env bash
# A private PostgreSQL cluster with wal_level = logical, for the change
# capture tests (docs/PITR.md): the shared server on 5432 runs with
# wal_level = replica, and logical decoding needs a restart to turn on, so
# the capture tests get a cluster of their own on a spare port.
#
#   infra/pg-logical.sh start | stop | env
#
# The server is the machine's PostgreSQL 15 (the Debian package that also
# runs the main server on 5432; PGBACKUP_LOGICAL_BIN overrides its bin
# directory), run as the `postgres` OS user (PostgreSQL refuses root) on
# 127.0.0.1:$PGBACKUP_LOGICAL_PORT (54400) with trust authentication, data
# under /var/tmp/pgbackup-logical-<port>. `start` is idempotent: the tests
# call it themselves, so `cargo test` alone finds the cluster up.
set -euo pipefail
port=${PGBACKUP_LOGICAL_PORT:-54400}
bin=${PGBACKUP_LOGICAL_BIN:-/usr/lib/postgresql/15/bin}
root=/var/tmp/pgbackup-logical-$port
data=$root/data

start() {
  [ -x "$bin/initdb" ] || { echo "no PostgreSQL server programs in $bin (apt-get install postgresql-15, or set PGBACKUP_LOGICAL_BIN)" >&2; exit 1; }
  mkdir -p "$root"
  chown postgres:postgres "$root"
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    # A few slots and senders: each capture test makes its own slot.
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$root/server.log" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c wal_level=logical \
          -c max_replication_slots=20 -c max_wal_senders=20 -c max_connections=50 -c fsync=off" start >/dev/null \
      || { cat "$root/server.log" >&2; exit 1; }
  fi
  echo "PostgreSQL (wal_level = logical) is up on 127.0.0.1:$port"
}

stop() {
  if [ -f "$data/PG_VERSION" ]; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export PGBACKUP_LOGICAL_URL='postgres://postgres@127.0.0.1:$port/postgres'" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
