#!/usr/bin/env bash
# Local stand-ins for the cloud, on loopback only:
#   moto      S3 + Secrets Manager   http://127.0.0.1:5000
#   Azurite   Azure Blob             http://127.0.0.1:10000 (account devstoreaccount1)
#
#   infra/services.sh install | start | stop | status | env
#
# `start` installs what is missing (a Python venv in .venv, Azurite under
# infra/node_modules), starts both, waits until they answer, and creates the
# Azure test container. `env` prints the variables that point clients at them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
state=${PGBACKUP_SERVICES_DIR:-/tmp/pgbackup-services}
venv=$repo/.venv
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
  if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/cfn-lint" ] || [ ! -x "$venv/bin/cargo-lambda" ] \
     || ! "$venv/bin/python" -c 'import boto3, azure.storage.blob, samtranslator' 2>/dev/null; then
    echo "installing moto, boto3, azure-storage-blob, cfn-lint, aws-sam-translator and cargo-lambda into .venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'moto[server]' boto3 azure-storage-blob cfn-lint aws-sam-translator cargo-lambda
  fi
  if [ ! -x "$repo/infra/node_modules/.bin/azurite-blob" ]; then
    echo "installing azurite"
    (cd "$repo/infra" && npm ci --no-audit --no-fund --silent)
  fi
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
  if ! curl -sf http://127.0.0.1:5000/moto-api/ >/dev/null 2>&1; then
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 5000 >"$state/moto.log" 2>&1 &
    echo $! >"$state/moto.pid"
  fi
  if ! curl -s -o /dev/null http://127.0.0.1:10000/ 2>/dev/null; then
    nohup "$repo/infra/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort 10000 \
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
