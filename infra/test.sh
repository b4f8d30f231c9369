#!/usr/bin/env bash
# Runs every test of the workspace (the README's test command): makes sure
# PostgreSQL is up, starts the S3/Secrets Manager and Azure stand-ins, runs
# `cargo test --workspace`, and stops the stand-ins again.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/postgres.sh ensure
infra/services.sh start
trap 'infra/services.sh stop' EXIT
eval "$(infra/services.sh env)"
cargo test --workspace --locked "$@"
