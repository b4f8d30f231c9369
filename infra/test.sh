#!/usr/bin/env bash
# Runs every test of the workspace (the README's test command): makes sure
# PostgreSQL is up, starts the S3/Secrets Manager and Azure stand-ins and
# PostgreSQL 12-18 beside it (infra/pg-versions.sh, for the fidelity corpus),
# each at the version the repository pins (infra/tools.sh), runs
# `cargo test --workspace --no-fail-fast` (including the template judged
# after the SAM transform and the functions under moto's IAM enforcement),
# then the real Lambda binaries under the Lambda emulator
# (infra/lambda-e2e.sh), then every fuzz target for a short bounded time
# (infra/fuzz.sh; PGBACKUP_FUZZ_SECONDS per target, default 10), then the
# performance guard (bench/compare.sh --guard: a ~100 MB database; fails
# when create or restore is slower than 1.5x pg_dump/pg_restore in the same
# run), and stops the stand-ins again.
#
# A failing stage does not stop the others: the run ends with the list of
# every stage that failed (and cargo's list of every failing test binary).
#
# PGBACKUP_LATEST_TOOLS=1 runs the same suite on the newest release of every
# test tool and PostgreSQL build instead of the pinned ones (a deliberate
# upgrade trial; see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
infra/postgres.sh ensure
trap 'infra/pg-versions.sh stop; infra/pg-logical.sh stop; PGBACKUP_LOGICAL_PORT=54402 infra/pg-logical.sh stop; infra/services.sh stop' EXIT
infra/services.sh start
# PostgreSQL 12 … 18 for the fidelity corpus (and pg_dump 18, its judge);
# 13 … 18 run with wal_level = logical for the PITR judge (pitr_replay.rs).
infra/pg-versions.sh start
# A PostgreSQL 15 with wal_level = logical for the change capture tests
# (tests/tests/pitr_capture.rs; they start it themselves too).
infra/pg-logical.sh start
eval "$(infra/services.sh env)"
eval "$(infra/pg-versions.sh env)"

failed=()
stage() { # stage NAME COMMAND...: runs it, remembers a failure, goes on
  local name=$1 started=$SECONDS
  shift
  echo "== stage $name"
  if "$@"; then
    echo "== stage $name passed in $((SECONDS - started)) s"
  else
    echo "== stage $name FAILED after $((SECONDS - started)) s"
    failed+=("$name")
  fi
}
stage "cargo test" cargo test --workspace --locked --no-fail-fast "$@"
stage "lambda e2e" infra/lambda-e2e.sh
stage "fuzz" infra/fuzz.sh "${PGBACKUP_FUZZ_SECONDS:-10}"
stage "performance guard" bench/compare.sh --guard
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED stages: ${failed[*]}" >&2
  exit 1
fi
echo "all stages passed"
