#!/usr/bin/env bash
# backupctl against pg_dump / pg_restore, measured side by side in one run on
# the same machine, so the ratios mean something wherever it runs.
#
#   bench/compare.sh [BOOKINGS]        (default 4000000: about 1.1 GB of tables)
#   bench/compare.sh --guard           (CI regression guard: a ~50 MB database and
#                                       the debug build, BENCH_PROFILE=release for
#                                       the release one; fails if create or restore is slower than
#                                       1.5x the reference)
#
# Builds the car-wash database from the fixture generator, then for ROUNDS
# rounds (default 3; 5 for the guard), alternating which tool goes first:
#   create:  backupctl create  |  pg_dump -Fc -Z0  |  pg_dump -Fc
#            |  pg_dump 18 -Fd -j2 -Z zstd:1 (not in the guard)
#   restore: into a fresh empty database each time:
#            backupctl restore  |  pg_restore --single-transaction  |  pg_restore -j2
#            |  pg_restore 18 -j2 of the -Fd dump (not in the guard)
# and prints medians (wall seconds, output bytes, peak RSS from
# /usr/bin/time), ratios, the same create/restore pinned to one core
# (taskset -c 0, standing in for a 1-vCPU Lambda) with the database size
# that would fit in a 15-minute function with a 20 % margin, and one
# backupctl create per BACKUP_COMPRESSION_LEVEL in LEVELS (default
# "-5 1 3 9"): level, output size, create time.
#
# pg_dump/pg_restore 18 with zstd come from infra/pg18-client.sh (installs
# them on first use); PG18_BIN=<dir> points elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

guard=
bookings=4000000
case "${1:-}" in
  --guard) guard=1; bookings=${GUARD_BOOKINGS:-200000} ;;
  "") ;;
  *) bookings=$1 ;;
esac
# The guard's small database has more fixed cost per run, so its ratios
# spread more: five rounds keep its median steady.
rounds=${ROUNDS:-$([ -n "$guard" ] && echo 5 || echo 3)}
guard_limit=${GUARD_LIMIT:-1.5}
admin=${PGADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${admin%/*}
source_db=pgbackup_bench
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/pgbackup-target}
levels=${LEVELS:-"-5 1 3 9"}
pg18=
if [ -z "$guard" ]; then
  pg18=${PG18_BIN:-$(infra/pg18-client.sh)}
  "$pg18/pg_dump" --version | grep -q ' 18\.' \
    || { echo "$pg18/pg_dump is not pg_dump 18: $("$pg18/pg_dump" --version)" >&2; exit 1; }
fi
# pg_restore 18 sets transaction_timeout (new in 17), which a 15 server
# refuses; it goes on and ends with status 1. Any other error still fails.
pg_restore18() {
  local log rc=0
  log=$(mktemp)
  "$pg18/pg_restore" "$@" 2>"$log" || rc=$?
  if [ "$rc" != 0 ] && grep 'ERROR:' "$log" | grep -vq 'unrecognized configuration parameter "transaction_timeout"'; then
    cat "$log" >&2; rm -f "$log"; return "$rc"
  fi
  rm -f "$log"
}
export -f pg_restore18
export pg18

command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
command -v taskset >/dev/null || { apt-get update -qq && apt-get install -y -qq util-linux; }
infra/postgres.sh ensure >/dev/null
# The guard reuses the test build (debug profile: dependencies optimised, see
# Cargo.toml) instead of a second, release build of every dependency (~6
# minutes of a cold CI run). Our own code runs unoptimised there, so a guard
# that passes means the release build passes with room to spare; the
# published numbers (no --guard) always come from the release build.
profile=${BENCH_PROFILE:-$([ -n "$guard" ] && echo dev || echo release)}
if [ "$profile" = release ]; then
  cargo build --release --locked -q -p backupctl
  backupctl=$CARGO_TARGET_DIR/release/backupctl
else
  # The whole workspace's binaries: built alone, backupctl would resolve
  # some dependency features differently from the test build and rebuild them.
  cargo build --locked -q --workspace --bins
  backupctl=$CARGO_TARGET_DIR/debug/backupctl
fi
echo "backupctl: $profile build"
work=$(mktemp -d /var/tmp/pgbackup-bench.XXXXXX)
trap 'rm -rf "$work"; for db in $(psql "$admin" -qXAt -c "SELECT datname FROM pg_database WHERE datname LIKE '"'"'pgbackup_bench_r%'"'"'"); do psql "$admin" -qX -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; done' EXIT

export BACKUP_ENCRYPTION_KEY=${BACKUP_ENCRYPTION_KEY:-$("$backupctl" keys generate)}
export RUST_LOG=warn BACKUP_METRICS=off

echo "== database $source_db with $bookings bookings"
if [ "$(psql "$admin" -qXAt -c "SELECT count(*) FROM pg_database WHERE datname = '$source_db'")" = 1 ] \
   && [ "$(psql "$server/$source_db" -qXAt -c 'SELECT count(*) FROM "Booking"' 2>/dev/null)" = "$bookings" ]; then
  echo "(reusing it)"
else
  psql "$admin" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $source_db WITH (FORCE)" -c "CREATE DATABASE $source_db"
  psql "$server/$source_db" -qX -v ON_ERROR_STOP=1 -f tests/fixtures/carwash-schema.sql
  psql "$server/$source_db" -qX -v ON_ERROR_STOP=1 -v bookings="$bookings" -f tests/fixtures/carwash-data.sql >/dev/null
  psql "$server/$source_db" -qX -c "VACUUM ANALYZE" >/dev/null
fi
db_bytes=$(psql "$server/$source_db" -qXAt -c "SELECT pg_database_size(current_database())")
echo "size: $db_bytes bytes ($(psql "$server/$source_db" -qXAt -c "SELECT pg_size_pretty(pg_database_size(current_database()))"))"

# One untimed read of every table first, so the first measured run does
# not pay for a cold cache that every later run is spared (with ROUNDS=1
# that was backupctl's create, 25 % slower than the same create at the end).
echo "== warming the cache (untimed)"
pg_dump -f /dev/null "$server/$source_db"

# measure NAME COMMAND...: appends "NAME seconds rss_kib" to $work/times.
# A CHECKPOINT first (not timed), so the dirty pages and WAL one run left
# behind are not written during the next one: every run starts alike, and
# pays for its own writes only.
measure() {
  local name=$1; shift
  psql "$admin" -qXAt -c CHECKPOINT >/dev/null
  /usr/bin/time -f "$name %e %M" -a -o "$work/times" "$@" >/dev/null 2>"$work/last.err" \
    || { echo "$name failed:" >&2; cat "$work/last.err" >&2; exit 1; }
}
fresh_db() { # fresh_db NAME: an empty database
  psql "$admin" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}
size_of() { du -sb "$1" | cut -f1; } # a file, or a directory-format dump

: >"$work/times"
: >"$work/sizes"
for round in $(seq 1 "$rounds"); do
  echo "== round $round of $rounds"
  rm -rf "$work/backups" "$work/backups_binary" "$work"/*.dump "$work/d18"
  create_backupctl() {
    BACKUP_DIR=$work/backups DATABASE_URL=$server/$source_db measure "create.backupctl" "$backupctl" create
  }
  # BACKUP_COPY_FORMAT=binary (not in the guard): faster, larger.
  create_binary() {
    [ -z "$guard" ] || return 0
    BACKUP_COPY_FORMAT=binary BACKUP_DIR=$work/backups_binary DATABASE_URL=$server/$source_db \
      measure "create.backupctl_binary" "$backupctl" create
  }
  create_z0() { measure "create.pg_dump_Z0" pg_dump -Fc -Z0 -f "$work/z0.dump" "$server/$source_db"; }
  create_fc() { measure "create.pg_dump_Fc" pg_dump -Fc -f "$work/fc.dump" "$server/$source_db"; }
  # The fastest compressed stock configuration: parallel, zstd.
  create_d18() {
    [ -n "$pg18" ] || return 0
    measure "create.pg_dump18_Fd" "$pg18/pg_dump" -Fd -j2 -Z zstd:1 -f "$work/d18" "$server/$source_db"
  }
  # Alternate the order so neither tool always runs on a warmer cache.
  if [ $((round % 2)) = 1 ]; then create_backupctl; create_binary; create_z0; create_fc; create_d18
  else create_d18; create_fc; create_z0; create_binary; create_backupctl; fi
  backup=$(ls "$work"/backups/backup-*.backup)
  id=$(basename "$backup" .backup)
  printf 'backupctl %s\npg_dump_Z0 %s\npg_dump_Fc %s\n' "$(size_of "$backup")" "$(size_of "$work/z0.dump")" "$(size_of "$work/fc.dump")" >>"$work/sizes"
  [ -z "$pg18" ] || printf 'pg_dump18_Fd %s\n' "$(size_of "$work/d18")" >>"$work/sizes"
  binary_id=
  if [ -z "$guard" ]; then
    binary_backup=$(ls "$work"/backups_binary/backup-*.backup)
    binary_id=$(basename "$binary_backup" .backup)
    printf 'backupctl_binary %s\n' "$(size_of "$binary_backup")" >>"$work/sizes"
  fi

  restore_backupctl() {
    fresh_db pgbackup_bench_r1
    BACKUP_DIR=$work/backups DATABASE_URL=$server/$source_db \
      measure "restore.backupctl" "$backupctl" restore --backup-id "$id" --target-url "$server/pgbackup_bench_r1" --yes --no-safety-backup
  }
  restore_binary() {
    [ -n "$binary_id" ] || return 0
    fresh_db pgbackup_bench_r5
    BACKUP_DIR=$work/backups_binary DATABASE_URL=$server/$source_db \
      measure "restore.backupctl_binary" "$backupctl" restore --backup-id "$binary_id" --target-url "$server/pgbackup_bench_r5" --yes --no-safety-backup
  }
  restore_single() {
    fresh_db pgbackup_bench_r2
    measure "restore.pg_restore_1tx" pg_restore --single-transaction -d "$server/pgbackup_bench_r2" "$work/z0.dump"
  }
  restore_j2() {
    fresh_db pgbackup_bench_r3
    measure "restore.pg_restore_j2" pg_restore -j2 -d "$server/pgbackup_bench_r3" "$work/z0.dump"
  }
  restore_d18() {
    [ -n "$pg18" ] || return 0
    fresh_db pgbackup_bench_r4
    measure "restore.pg_restore18_j2" bash -c 'pg_restore18 "$@"' pg_restore18 -j2 -d "$server/pgbackup_bench_r4" "$work/d18"
  }
  if [ $((round % 2)) = 1 ]; then restore_backupctl; restore_binary; restore_single; restore_j2; restore_d18
  else restore_d18; restore_j2; restore_single; restore_binary; restore_backupctl; fi
  # The restored copies must hold what the source holds.
  for copy in pgbackup_bench_r1 $([ -z "$binary_id" ] || echo pgbackup_bench_r5); do
    for table in Booking User; do
      a=$(psql "$server/$source_db" -qXAt -c "SELECT count(*) FROM \"$table\"")
      b=$(psql "$server/$copy" -qXAt -c "SELECT count(*) FROM \"$table\"")
      [ "$a" = "$b" ] || { echo "backupctl restore ($copy) lost rows of $table: $a vs $b" >&2; exit 1; }
    done
  done
done

if [ -z "$guard" ]; then
  echo "== one core (taskset -c 0), one round"
  rm -rf "$work/backups"
  BACKUP_DIR=$work/backups DATABASE_URL=$server/$source_db measure "core1.create.backupctl" taskset -c 0 "$backupctl" create
  measure "core1.create.pg_dump_Z0" taskset -c 0 pg_dump -Fc -Z0 -f "$work/z0.dump" "$server/$source_db"
  id=$(basename "$(ls "$work"/backups/backup-*.backup)" .backup)
  fresh_db pgbackup_bench_r1
  BACKUP_DIR=$work/backups DATABASE_URL=$server/$source_db \
    measure "core1.restore.backupctl" taskset -c 0 "$backupctl" restore --backup-id "$id" --target-url "$server/pgbackup_bench_r1" --yes --no-safety-backup
  fresh_db pgbackup_bench_r2
  measure "core1.restore.pg_restore_1tx" taskset -c 0 pg_restore --single-transaction -d "$server/pgbackup_bench_r2" "$work/z0.dump"

  echo "== compression levels ($levels), one create each"
  for level in $levels; do
    rm -rf "$work/backups"
    BACKUP_COMPRESSION_LEVEL=$level BACKUP_DIR=$work/backups DATABASE_URL=$server/$source_db \
      measure "level.$level" "$backupctl" create
    printf 'level.%s %s\n' "$level" "$(size_of "$(ls "$work"/backups/backup-*.backup)")" >>"$work/sizes"
  done
fi

python3 - "$work/times" "$work/sizes" "$db_bytes" "$bookings" "$guard" "$guard_limit" <<'PY'
import statistics, sys
times_file, sizes_file, db_bytes, bookings, guard, limit = sys.argv[1:7]
db_bytes, limit = int(db_bytes), float(limit)
runs, sizes = {}, {}
for line in open(times_file):
    parts = line.split()
    if len(parts) == 3 and not parts[0].startswith("Command"):
        runs.setdefault(parts[0], []).append((float(parts[1]), int(parts[2])))
for line in open(sizes_file):
    name, size = line.split()
    sizes.setdefault(name, []).append(int(size))
med = lambda name: statistics.median(t for t, _ in runs[name])
rss = lambda name: max(r for _, r in runs[name]) / 1024
print(f"\n{bookings} bookings, database {db_bytes / 1e6:.0f} MB, {len(runs['create.backupctl'])} rounds (medians)\n")
print("| step | tool | wall s | ratio | output MB | peak RSS MiB |")
print("|---|---|---|---|---|---|")
ref_create = med("create.pg_dump_Z0")
d18 = "create.pg_dump18_Fd" in runs
binary = "create.backupctl_binary" in runs
for name, label in [("create.backupctl", "backupctl create (zstd-1, AES, HMAC)")] + \
                   ([("create.backupctl_binary", "backupctl create, BACKUP_COPY_FORMAT=binary")] if binary else []) + \
                   [("create.pg_dump_Z0", "pg_dump -Fc -Z0"), ("create.pg_dump_Fc", "pg_dump -Fc")] + \
                   ([("create.pg_dump18_Fd", "pg_dump 18 -Fd -j2 -Z zstd:1")] if d18 else []):
    size = statistics.median(sizes[name.split(".")[1]]) / 1e6
    print(f"| create | {label} | {med(name):.2f} | {med(name) / ref_create:.2f} | {size:.1f} | {rss(name):.0f} |")
# Ratios against the best stock restore: pg_restore -j2 of 15's -Fc -Z0
# dump and of 18's -Fd zstd dump (the single transaction one is slower).
# The guard keeps its reference: the faster of -j2 and the single transaction.
best_restore = min([med("restore.pg_restore_j2")] + ([med("restore.pg_restore18_j2")] if d18 else [])
                   + ([med("restore.pg_restore_1tx")] if guard else []))
for name, label in [("restore.backupctl", "backupctl restore (empty database)")] + \
                   ([("restore.backupctl_binary", "backupctl restore of the binary backup")] if binary else []) + \
                   [("restore.pg_restore_1tx", "pg_restore --single-transaction"),
                    ("restore.pg_restore_j2", "pg_restore -j2")] + \
                   ([("restore.pg_restore18_j2", "pg_restore 18 -j2 (of -Fd -Z zstd:1)")] if d18 else []):
    print(f"| restore | {label} | {med(name):.2f} | {med(name) / best_restore:.2f} | | {rss(name):.0f} |")
create_ratio = med("create.backupctl") / ref_create
restore_ratio = med("restore.backupctl") / best_restore
size_ratio = statistics.median(sizes["backupctl"]) / statistics.median(sizes["pg_dump_Fc"])
print(f"\ncreate: {create_ratio:.2f}x pg_dump -Fc -Z0 (target 0.90); output {size_ratio:.2f}x pg_dump -Fc (target 1.05)")
if d18:
    d18_time = med("create.backupctl") / med("create.pg_dump18_Fd")
    d18_size = statistics.median(sizes["backupctl"]) / statistics.median(sizes["pg_dump18_Fd"])
    print(f"create: {d18_time:.2f}x pg_dump 18 -Fd -j2 -Z zstd:1 (target 0.90), output {d18_size:.2f}x its (target 1.00)")
print(f"restore: {restore_ratio:.2f}x the best pg_restore -j2 (target 0.80)")
if binary:
    b_create = med("create.backupctl_binary")
    b_size = statistics.median(sizes["backupctl_binary"])
    print(f"binary: create {b_create / ref_create:.2f}x pg_dump -Fc -Z0"
          + (f", {b_create / med('create.pg_dump18_Fd'):.2f}x pg_dump 18 (output {b_size / statistics.median(sizes['pg_dump18_Fd']):.2f}x its)" if d18 else "")
          + f"; output {b_size / statistics.median(sizes['pg_dump_Fc']):.2f}x pg_dump -Fc; "
          f"restore {med('restore.backupctl_binary') / best_restore:.2f}x the best pg_restore -j2")
print(f"peak RSS: create {rss('create.backupctl'):.0f} MiB, restore {rss('restore.backupctl'):.0f} MiB (target < 64)")
if "core1.create.backupctl" in runs:
    budget = 15 * 60 * 0.8
    c1, r1 = med("core1.create.backupctl"), med("core1.restore.backupctl")
    print(f"\none core: create {c1:.2f} s ({c1 / med('core1.create.pg_dump_Z0'):.2f}x pg_dump -Fc -Z0), "
          f"restore {r1:.2f} s ({r1 / med('core1.restore.pg_restore_1tx'):.2f}x pg_restore --single-transaction)")
    print(f"fits a 15-minute Lambda with 20 % margin: create up to {db_bytes * budget / c1 / 1e9:.1f} GB, "
          f"restore up to {db_bytes * budget / r1 / 1e9:.1f} GB of database")
levels = [name for name in runs if name.startswith("level.")]
if levels:
    print("\n| BACKUP_COMPRESSION_LEVEL | output MB | vs pg_dump -Fc | create s | vs pg_dump -Fc -Z0 |")
    print("|---|---|---|---|---|")
    fc = statistics.median(sizes["pg_dump_Fc"])
    for name in sorted(levels, key=lambda n: int(n.split(".", 1)[1])):
        size = statistics.median(sizes[name])
        print(f"| {name.split('.', 1)[1]} | {size / 1e6:.1f} | {size / fc:.2f} | {med(name):.2f} | {med(name) / ref_create:.2f} |")
if guard:
    failed = [f"{what} {ratio:.2f}x > {limit}x" for what, ratio in
              [("create", create_ratio), ("restore", restore_ratio)] if ratio > limit]
    if failed:
        sys.exit("performance guard failed: " + "; ".join(failed))
    print(f"performance guard passed (limit {limit}x)")
PY
