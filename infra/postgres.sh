#!/usr/bin/env bash
# `infra/postgres.sh ensure`: make sure the local PostgreSQL answers on
# 127.0.0.1:5432 (this machine kind runs one; start it if it stopped).
set -euo pipefail
case "${1:-ensure}" in
  ensure)
    if pg_isready -h 127.0.0.1 -p 5432 -q; then
      echo "PostgreSQL is up on 127.0.0.1:5432"
      exit 0
    fi
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
    [ -n "$version" ] || { echo "no PostgreSQL cluster configured under /etc/postgresql" >&2; exit 1; }
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do
      pg_isready -h 127.0.0.1 -p 5432 -q && { echo "PostgreSQL started"; exit 0; }
      sleep 1
    done
    echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
    exit 1
    ;;
  *)
    echo "usage: infra/postgres.sh ensure" >&2
    exit 2
    ;;
esac
