#!/usr/bin/env bash
# The main job on local defaults: builds a sample car-wash database from the
# fixture, then backs it up, lists, verifies (deep) and restores it into a
# second database with local storage, printing what it does.
#
#   infra/demo.sh [BOOKINGS]        (default 50000 bookings)
#
# Uses the PostgreSQL on 127.0.0.1:5432 (PGADMIN_URL to change), ./backups,
# and BACKUP_ENCRYPTION_KEY (a fresh key is generated and shown if unset).
set -euo pipefail
cd "$(dirname "$0")/.."
bookings=${1:-50000}
admin=${PGADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${admin%/*}
source_db=carwash_demo
restored_db=carwash_demo_restored

step() { printf '\n== %s\n' "$*"; }

infra/postgres.sh ensure
step "building backupctl"
cargo build --release --locked -q -p backupctl
backupctl=${CARGO_TARGET_DIR:-target}/release/backupctl

if [ -z "${BACKUP_ENCRYPTION_KEY:-}" ]; then
  BACKUP_ENCRYPTION_KEY=$("$backupctl" keys generate)
  echo "generated an encryption key for this demo (keep it to restore these backups):"
  echo "  export BACKUP_ENCRYPTION_KEY=$BACKUP_ENCRYPTION_KEY"
fi
export BACKUP_ENCRYPTION_KEY
export BACKUP_DIR=${BACKUP_DIR:-./backups}
export DATABASE_URL="$server/$source_db"
export BACKUP_SCRATCH_DATABASE_URL="$admin"
# Readable output: warnings only, no metric lines (JSON logs are for machines).
export RUST_LOG=${RUST_LOG:-warn} BACKUP_METRICS=${BACKUP_METRICS:-off}

step "creating sample database $source_db with $bookings bookings"
psql "$admin" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $source_db WITH (FORCE)" -c "CREATE DATABASE $source_db"
psql "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 -f tests/fixtures/carwash-schema.sql
psql "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 -v bookings="$bookings" -f tests/fixtures/carwash-data.sql >/dev/null
psql "$DATABASE_URL" -qXAt -c "SELECT 'tables: ' || count(*) FROM pg_tables WHERE schemaname = 'public'" \
  -c "SELECT 'size: ' || pg_size_pretty(pg_database_size(current_database()))"

step "backupctl create"
"$backupctl" create --reason "demo" --requested-by "${USER:-demo}"

step "backupctl list"
"$backupctl" list

step "backupctl verify --depth deep (restores into a scratch database, compares, drops it)"
"$backupctl" verify --backup-id latest --depth deep

step "backupctl restore into a new database $restored_db"
psql "$admin" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $restored_db WITH (FORCE)" -c "CREATE DATABASE $restored_db"
"$backupctl" restore --backup-id latest --target-url "$server/$restored_db" --yes

step "comparing row counts of $source_db and $restored_db"
count_rows() {
  for table in Service Booking User Testimonial Setting TimeSlot BusinessHours Holiday EmailNotification; do
    printf '%s=%s ' "$table" "$(psql "$1" -qXAt -c "SELECT count(*) FROM \"$table\"")"
  done
}
before=$(count_rows "$DATABASE_URL")
after=$(count_rows "$server/$restored_db")
echo "source:   $before"
echo "restored: $after"
[ "$before" = "$after" ] && echo "row counts match" || { echo "row counts differ" >&2; exit 1; }

step "right to deletion: a customer asks to be forgotten, and no restore brings them back"
# A new customer (a fresh random id, so earlier demo runs' erasures never touch
# this run's data) books a wash; a backup is taken while they are a customer.
customer=$(psql "$DATABASE_URL" -qXAt -v ON_ERROR_STOP=1 -c "
  WITH new_user AS (
    INSERT INTO \"User\" (\"email\", \"name\", \"updatedAt\")
    VALUES ('forget-me-' || gen_random_uuid() || '@example.com', 'Erin Erasure', now()) RETURNING \"id\")
  INSERT INTO \"Booking\" (\"userId\", \"serviceId\", \"status\", \"scheduledAt\", \"totalPrice\", \"createdAt\", \"updatedAt\")
  SELECT \"id\", 1, 'CONFIRMED', now() + interval '1 day', 9.90, now(), now() FROM new_user RETURNING \"userId\"" | head -1)
echo "customer $customer has $(psql "$DATABASE_URL" -qXAt -c "SELECT count(*) FROM \"Booking\" WHERE \"userId\" = '$customer'") booking(s)"
"$backupctl" create --reason "demo: before the erasure request" --requested-by "${USER:-demo}"
with_customer=$("$backupctl" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
# The application deletes them (bookings first: that foreign key does not cascade) ...
psql "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 -c "DELETE FROM \"Booking\" WHERE \"userId\" = '$customer'" \
  -c "DELETE FROM \"User\" WHERE \"id\" = '$customer'"
# ... and the erasures go into the ledger (sealed: the ledger shows no id)
"$backupctl" erase --table User --key "id=$customer" --reason "demo: GDPR request" --requested-by dpo
"$backupctl" erase --table Booking --key "userId=$customer" --reason "demo: GDPR request" --requested-by dpo
"$backupctl" erase --report

step "restoring $with_customer (taken while they were a customer) into $restored_db"
psql "$admin" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $restored_db WITH (FORCE)" -c "CREATE DATABASE $restored_db"
"$backupctl" restore --backup-id "$with_customer" --target-url "$server/$restored_db" --yes
left=$(psql "$server/$restored_db" -qXAt -c "SELECT (SELECT count(*) FROM \"User\" WHERE \"id\" = '$customer') + (SELECT count(*) FROM \"Booking\" WHERE \"userId\" = '$customer')")
echo "rows of customer $customer in the restored database: $left"
[ "$left" = 0 ] || { echo "the erased customer came back" >&2; exit 1; }
before=$(count_rows "$DATABASE_URL")
after=$(count_rows "$server/$restored_db")
[ "$before" = "$after" ] && echo "the erasure survived the restore; row counts match the source" \
  || { echo "row counts differ: $before / $after" >&2; exit 1; }
