#!/usr/bin/env bash
# Local stand-ins for the cloud, on loopback only:
#   moto      S3 + Secrets Manager   http://127.0.0.1:5000
#   Azurite   Azure Blob             http://127.0.0.1:10000 (account devstoreaccount1)
#
#   infra/services.sh install | start | stop | status | env
#
# `start` installs what is missing or not at its pinned version (a Python
# venv in .venv from infra/requirements.txt, Azurite under infra/node_modules
# from infra/package-lock.json; infra/tools.sh), starts both, waits until they
# answer, and creates the Azure test container. A stand-in already answering
# on its port is used only when it is the pinned one. `env` prints the
# variables that point clients at them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
state=${PGBACKUP_SERVICES_DIR:-/tmp/pgbackup-services}
# shellcheck source=infra/tools.sh
. "$repo/infra/tools.sh"
venv=$tools_venv
azurite_key='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

print_env() {
  cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:5000
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AZURE_STORAGE_ACCOUNT=devstoreaccount1 AZURE_STORAGE_KEY='$azurite_key'
export AZURE_CONTAINER=pgbackup-test AZURE_STORAGE_USE_EMULATOR=true
export PGBACKUP_PYTHON=$venv/bin/python
ENV
}

install() {
  ensure_python_tools
  ensure_node_tools
}

# The moto version of the server answering on port 5000, read from the
# Python environment of the process that listens there ("" if unknown).
running_moto_version() {
  local pid exe
  pid=$(ss -ltnpH 'sport = :5000' 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
  [ -n "$pid" ] || return 0
  exe=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | awk '{print $1}')
  case $exe in */python*) ;; *) exe=$(dirname "$(tr '\0' ' ' <"/proc/$pid/cmdline" | awk '{print $2}')")/python ;; esac
  [ -x "$exe" ] || return 0
  "$exe" -c 'from importlib import metadata; print(metadata.version("moto"))' 2>/dev/null || true
}

wait_for() {
  local name=$1 check=$2
  for _ in $(seq 1 60); do
    if eval "$check" >/dev/null 2>&1; then echo "$name is up"; return 0; fi
    sleep 0.5
  done
  echo "$name did not come up; see $state/$name.log" >&2
  return 1
}

start() {
  install
  mkdir -p "$state"
  if curl -sf http://127.0.0.1:5000/moto-api/ >/dev/null 2>&1 && [ -z "$tools_latest" ]; then
    local running pinned
    running=$(running_moto_version)
    pinned=$(pinned_python_version moto)
    if [ "$running" != "$pinned" ]; then
      echo "port 5000 is held by a stand-in that is not moto $pinned (it reports '${running:-unknown}');" \
        "stop it (infra/services.sh stop, or kill the process on 127.0.0.1:5000) and start again" >&2
      return 1
    fi
  fi
  if ! curl -sf http://127.0.0.1:5000/moto-api/ >/dev/null 2>&1; then
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 5000 >"$state/moto.log" 2>&1 &
    echo $! >"$state/moto.pid"
  fi
  if ! curl -s -o /dev/null http://127.0.0.1:10000/ 2>/dev/null; then
    nohup "$(azurite_bin)" --blobHost 127.0.0.1 --blobPort 10000 \
      --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --loose >"$state/azurite.log" 2>&1 &
    echo $! >"$state/azurite.pid"
  fi
  wait_for moto "curl -sf http://127.0.0.1:5000/moto-api/"
  wait_for azurite "curl -s -o /dev/null http://127.0.0.1:10000/"
  eval "$(print_env)"
  "$venv/bin/python" - <<'PY'
import os
from azure.storage.blob import BlobServiceClient
from azure.core.exceptions import ResourceExistsError
conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + os.environ["AZURE_STORAGE_KEY"]
        + ";BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
try:
    BlobServiceClient.from_connection_string(conn).create_container(os.environ["AZURE_CONTAINER"])
except ResourceExistsError:
    pass
PY
  echo "Azure container $AZURE_CONTAINER ready"
}

stop() {
  for name in moto azurite; do
    if [ -f "$state/$name.pid" ]; then
      kill "$(cat "$state/$name.pid")" 2>/dev/null || true
      rm -f "$state/$name.pid"
      echo "$name stopped"
    fi
  done
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status)
    curl -sf http://127.0.0.1:5000/moto-api/ >/dev/null && echo "moto up" || echo "moto down"
    curl -s -o /dev/null http://127.0.0.1:10000/ && echo "azurite up" || echo "azurite down"
    ;;
  env) print_env ;;
  *) echo "usage: infra/services.sh install|start|stop|status|env" >&2; exit 2 ;;
esac
