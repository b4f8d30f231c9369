#!/usr/bin/env bash
# Runs every test of the workspace (the README's test command): makes sure
# PostgreSQL is up, starts the S3/Secrets Manager and Azure stand-ins and
# PostgreSQL 12-18 beside it (infra/pg-versions.sh, for the fidelity corpus), runs
# `cargo test --workspace` (including the template judged after the SAM
# transform and the functions under moto's IAM enforcement), then the real
# Lambda binaries under the Lambda emulator (infra/lambda-e2e.sh), then every
# fuzz target for a short bounded time (infra/fuzz.sh; PGBACKUP_FUZZ_SECONDS
# per target, default 15), then the performance guard (bench/compare.sh
# --guard: a ~100 MB database; fails when create or restore is slower than
# 1.5x pg_dump/pg_restore in the same run), and stops the stand-ins again.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/postgres.sh ensure
trap 'infra/pg-versions.sh stop; infra/services.sh stop' EXIT
infra/services.sh start
# PostgreSQL 12 … 18 for the fidelity corpus (and pg_dump 18, its judge).
infra/pg-versions.sh start
eval "$(infra/services.sh env)"
eval "$(infra/pg-versions.sh env)"
cargo test --workspace --locked "$@"
infra/lambda-e2e.sh
infra/fuzz.sh "${PGBACKUP_FUZZ_SECONDS:-15}"
bench/compare.sh --guard
