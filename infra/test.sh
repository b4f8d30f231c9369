#!/usr/bin/env bash
# Runs every test of the workspace (the README's test command): makes sure
# PostgreSQL is up, starts the S3/Secrets Manager and Azure stand-ins, runs
# `cargo test --workspace` (including the template judged after the SAM
# transform and the functions under moto's IAM enforcement), then the real
# Lambda binaries under the Lambda emulator (infra/lambda-e2e.sh), and stops
# the stand-ins again.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/postgres.sh ensure
infra/services.sh start
trap 'infra/services.sh stop' EXIT
eval "$(infra/services.sh env)"
cargo test --workspace --locked "$@"
infra/lambda-e2e.sh
