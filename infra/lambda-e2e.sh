#!/usr/bin/env bash
# End to end with the real Lambda binaries: `cargo lambda watch` serves the
# Lambda Runtime API on 127.0.0.1:9000, `cargo lambda invoke` sends the
# events in events/. Backs a sample database up (scheduled event) to moto's
# S3 with the keyring and an RDS-managed master secret (username/password
# only; host, port and database as the template passes them) in moto's
# Secrets Manager, verifies it from S3's Object Created event on
# EventBridge, restores it into a second database, dry-runs prune, takes a
# backup through the admin endpoint (a Function URL request) and writes the
# quarterly audit report.
# Point-in-time recovery on the logical cluster (infra/pg-logical.sh,
# 127.0.0.1:54400): the capture function's first scheduled run sets capture
# up (PITR_ENABLE_ON_FIRST_RUN), a base backup, writes before and after a
# recorded instant, a capture run that stores them as a segment under
# changes/ in moto's bucket, and a console restore with "at" into a new
# database that holds the writes before the instant and none after.
# Then the failing paths (a bad payload, a restore without confirmation, an
# unknown backup). Every secret is a known sentinel (master key, database
# password, webhook secret, AWS secret access key), and at the end the
# functions' logs and metric lines, every response, every webhook request
# and every object in the bucket are searched for them.
# Part of infra/test.sh; cargo-lambda comes from PyPI into .venv (seconds,
# pinned in infra/requirements.txt).
#
#   infra/lambda-e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
infra/services.sh install
# shellcheck source=infra/tools.sh
. "$repo/infra/tools.sh"
export PATH="$tools_venv/bin:$PATH"
infra/postgres.sh ensure
started_services=
curl -sf http://127.0.0.1:5000/moto-api/ >/dev/null 2>&1 || { infra/services.sh start; started_services=1; }
work=$(mktemp -d)
watch_pid=
cleanup() {
  [ -f "$work/watch.log" ] && { echo "== cargo lambda watch log (tail)"; tail -20 "$work/watch.log" | cut -c1-400; }
  [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null || true
  [ -n "${webhook_pid:-}" ] && kill "$webhook_pid" 2>/dev/null || true
  [ -n "$started_services" ] && infra/services.sh stop >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
eval "$(infra/services.sh env)"
admin=postgres://postgres@127.0.0.1:5432/postgres
db=carwash_lambda_e2e
copy=carwash_lambda_e2e_copy

echo "== sample database $db"
psql "$admin" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" \
  -c "DROP DATABASE IF EXISTS $copy WITH (FORCE)" -c "CREATE DATABASE $copy"
psql "${admin%/*}/$db" -qX -v ON_ERROR_STOP=1 -f tests/fixtures/carwash-schema.sql
psql "${admin%/*}/$db" -qX -v ON_ERROR_STOP=1 -v bookings=5000 -f tests/fixtures/carwash-data.sql >/dev/null

# Sentinels: known values for every secret, searched for at the end.
export SENTINEL_MASTER_KEY=$(printf 'pgbackup lambda sentinel' | sha256sum | cut -d' ' -f1)
export SENTINEL_DB_PASSWORD=pw-sentinel-lambda-5a1b
export SENTINEL_WEBHOOK_SECRET=whsec-sentinel-lambda-8e9f
export SENTINEL_AWS_SECRET=aws-sentinel-lambda-3c4d

echo "== webhook receiver"
"$PGBACKUP_PYTHON" - "$work/webhook.log" >"$work/webhook.port" 2>"$work/webhook.err" <<'PY' &
import http.server, sys
log = open(sys.argv[1], "ab", buffering=0)
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        log.write(str(self.headers).encode() + body + b"\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
webhook_pid=$!
for _ in $(seq 1 50); do [ -s "$work/webhook.port" ] && break; sleep 0.1; done
webhook_port=$(cat "$work/webhook.port")

echo "== bucket and secrets in moto"
"$PGBACKUP_PYTHON" - "$db" >"$work/arns" <<'PY'
import json, os, secrets, sys, boto3
kw = dict(endpoint_url="http://127.0.0.1:5000", region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
boto3.client("s3", **kw).create_bucket(Bucket="pgbackup-lambda-e2e")
sm = boto3.client("secretsmanager", **kw)
suffix = secrets.token_hex(4)
keyring = sm.create_secret(Name=f"pgbackup-keyring-{suffix}", SecretString=json.dumps(
    {"current": "k1", "keys": {"k1": os.environ["SENTINEL_MASTER_KEY"]}}))["ARN"]
# An RDS-managed master secret holds only these two (trust auth here
# ignores the password; it is a sentinel).
database = sm.create_secret(Name=f"carwash-db-{suffix}", SecretString=json.dumps(
    {"username": "postgres", "password": os.environ["SENTINEL_DB_PASSWORD"]}))["ARN"]
print(keyring)
print(database)
PY
keyring_arn=$(sed -n 1p "$work/arns")
database_arn=$(sed -n 2p "$work/arns")
cat >"$work/env" <<ENV
BACKUP_STORAGE_TYPE=s3
S3_BACKUP_BUCKET=pgbackup-lambda-e2e
BACKUP_KEYRING_SECRET_ARN=$keyring_arn
DATABASE_SECRET_ARN=$database_arn
DATABASE_HOST=127.0.0.1
DATABASE_PORT=5432
DATABASE_NAME=$db
DATABASE_SSLMODE=require
AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$SENTINEL_AWS_SECRET
AWS_REGION=$AWS_REGION
BACKUP_WEBHOOK_URL=http://127.0.0.1:$webhook_port/hook
BACKUP_WEBHOOK_SECRET=$SENTINEL_WEBHOOK_SECRET
ENABLE_AUTO_BACKUP=true
BACKUP_DEADLINE_MARGIN_MS=2000
RUST_LOG=info
ENV

echo "== building the functions as cargo lambda watch runs them"
# watch compiles a function on its first invoke (`cargo run --bin NAME`),
# and on a cold target directory that outlasts the invoke's wait; built
# here the same way, each first invoke only starts the binary.
for function in create verify restore prune admin rotate capture; do
  cargo build --quiet --manifest-path Cargo.toml --bin "$function" ${LAMBDA_WATCH_FLAGS:-}
done

echo "== cargo lambda watch"
# LAMBDA_WATCH_FLAGS=--release runs optimised binaries (for timing cold starts).
cargo lambda watch ${LAMBDA_WATCH_FLAGS:-} --invoke-address 127.0.0.1 --invoke-port 9000 --timeout 300 --env-file "$work/env" >"$work/watch.log" 2>&1 &
watch_pid=$!
for _ in $(seq 1 120); do
  curl -s -o /dev/null "http://127.0.0.1:9000/" && break
  sleep 1
done

invoke() { # invoke FUNCTION FILE
  cargo lambda invoke "$1" --invoke-address 127.0.0.1 --invoke-port 9000 --data-file "$2" --output-format json
}

echo "== create ← EventBridge scheduled event"
invoke create events/scheduled.json | tee "$work/created.json"
id=$("$PGBACKUP_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/created.json")

echo "== verify ← S3 Object Created event (EventBridge) for backups/$id.backup"
sed -e "s|\"BUCKET\"|\"pgbackup-lambda-e2e\"|g" -e "s|\"KEY\"|\"backups/$id.backup\"|" events/s3-object-created.json >"$work/s3-event.json"
invoke verify "$work/s3-event.json" | tee "$work/verified.json"
grep -q '"status":"passed"' <(tr -d ' \n' <"$work/verified.json")

echo "== restore ← console payload into $copy"
printf '{"backupId": "%s", "target": "%s", "confirm": "%s", "reason": "e2e drill", "requestedBy": "infra/lambda-e2e.sh"}' \
  "$id" "$copy" "$copy" >"$work/restore.json"
invoke restore "$work/restore.json" | tee "$work/restored.json"

echo "== prune ← dry run"
invoke prune events/prune-dry-run.json

echo "== admin ← Function URL request (POST /backups, then GET /backups/<id>)"
invoke admin events/admin-post-backups.json | tee "$work/admin-post.json"
admin_id=$("$PGBACKUP_PYTHON" -c '
import json, sys
answer = json.load(open(sys.argv[1]))
assert answer["statusCode"] == 201, answer
metadata = json.loads(answer["body"])
assert metadata["requestedBy"] == "arn:aws:iam::123456789012:user/ops-anna", metadata
print(metadata["id"])' "$work/admin-post.json")
"$PGBACKUP_PYTHON" -c '
import json, sys
request = json.load(open(sys.argv[1]))
request["requestContext"]["http"]["method"] = "GET"
request["rawPath"] = request["requestContext"]["http"]["path"] = "/backups/" + sys.argv[2]
request["body"] = None
json.dump(request, open(sys.argv[3], "w"))' events/admin-post-backups.json "$admin_id" "$work/admin-get.json"
invoke admin "$work/admin-get.json" >"$work/admin-got.json"
grep -q '"statusCode":200' <(tr -d ' \n' <"$work/admin-got.json") || { cat "$work/admin-got.json" >&2; exit 1; }
echo "admin endpoint: created $admin_id and read it back"

echo "== audit report ← the quarterly schedule's payload"
printf '{"report": "audit"}' >"$work/report.json"
invoke prune "$work/report.json"

echo "== failing paths"
fails() { # fails FUNCTION FILE NAME: the invocation must fail
  if invoke "$1" "$2" >"$work/fail-$3.out" 2>&1; then
    echo "$1 with $(cat "$2") succeeded" >&2; exit 1
  fi
  echo "$1 refused ($3): $(tr -d '\n' <"$work/fail-$3.out" | cut -c1-160)"
}
printf '{"tables": ["Nope"], "reason": "leak check"}' >"$work/bad-create.json"
fails create "$work/bad-create.json" unknown-table
printf '{"backupId": "%s", "target": "%s"}' "$id" "$copy" >"$work/unconfirmed.json"
fails restore "$work/unconfirmed.json" unconfirmed
printf '{"backupId": "backup-1700000000000-00000000"}' >"$work/missing.json"
fails verify "$work/missing.json" missing-backup

echo "== point-in-time recovery: capture and restore \"at\" on the logical cluster (127.0.0.1:54400)"
infra/pg-logical.sh start >/dev/null
logical=postgres://postgres@127.0.0.1:54400
pitr_db=carwash_pitr_e2e
pitr_copy=carwash_pitr_e2e_copy
# Slot names are per cluster, which the capture tests share: one of its own.
pitr_slot=pgbackup_lambda_e2e
psql "$logical/postgres" -qX -v ON_ERROR_STOP=1 \
  -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$pitr_slot'" >/dev/null
psql "$logical/postgres" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $pitr_db WITH (FORCE)" -c "CREATE DATABASE $pitr_db" \
  -c "DROP DATABASE IF EXISTS $pitr_copy WITH (FORCE)"
psql "$logical/$pitr_db" -qX -v ON_ERROR_STOP=1 -f tests/fixtures/carwash-schema.sql
psql "$logical/$pitr_db" -qX -v ON_ERROR_STOP=1 -v bookings=500 -f tests/fixtures/carwash-data.sql >/dev/null
# The same functions, now configured for the logical cluster's database.
sed -e "s|^DATABASE_PORT=.*|DATABASE_PORT=54400|" -e "s|^DATABASE_NAME=.*|DATABASE_NAME=$pitr_db|" \
  -e "s|^DATABASE_SSLMODE=.*|DATABASE_SSLMODE=disable|" "$work/env" >"$work/env-pitr"
cat >>"$work/env-pitr" <<ENV
PITR_ENABLE_ON_FIRST_RUN=true
BACKUP_PITR_SLOT=$pitr_slot
BACKUP_PITR_PUBLICATION=$pitr_slot
ENV
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true
cat "$work/watch.log" >>"$work/watch-main.log"
cargo lambda watch ${LAMBDA_WATCH_FLAGS:-} --invoke-address 127.0.0.1 --invoke-port 9000 --timeout 300 --env-file "$work/env-pitr" >"$work/watch.log" 2>&1 &
watch_pid=$!
for _ in $(seq 1 120); do
  curl -s -o /dev/null "http://127.0.0.1:9000/" && break
  sleep 1
done

echo "== capture ← its schedule, first run: sets capture up"
invoke capture events/scheduled.json | tee "$work/capture-first.json"
"$PGBACKUP_PYTHON" - "$work/capture-first.json" "$pitr_slot" <<'PY'
import json, sys
report, slot = json.load(open(sys.argv[1])), sys.argv[2]
assert report["outcome"] == "no-changes", report
assert report["enabled"]["slot"] == slot and report["enabled"]["slotCreated"], report
assert "public.Booking" in report["enabled"]["tables"], report
assert report["slotHealth"]["slot"] == slot and report["slotHealth"]["lagBytes"] >= 0, report
# the cluster runs with max_slot_wal_keep_size = -1: said loudly
assert any("unlimited" in w for w in report["slotHealth"]["warnings"]), report
assert report["oldestUncapturedCommitAgeSeconds"] == 0, report
print(f"capture enabled: {len(report['enabled']['tables'])} tables published, left out: {report['enabled']['leftOut']}")
PY

echo "== create ← schedule: the base backup records the slot's position"
invoke create events/scheduled.json >"$work/pitr-base.json"
"$PGBACKUP_PYTHON" -c '
import json, sys
base = json.load(open(sys.argv[1]))
assert base["changeStream"]["slot"] == sys.argv[2], base.get("changeStream")
print("base backup", base["id"], "starts replay at", base["changeStream"]["startLsn"])' "$work/pitr-base.json" "$pitr_slot"

echo "== writes before and after the instant"
psql "$logical/$pitr_db" -qX -v ON_ERROR_STOP=1 \
  -c "UPDATE \"Booking\" SET notes = 'pitr-before' WHERE id <= 20" \
  -c "INSERT INTO \"Testimonial\" (\"authorName\", rating, content) VALUES ('e2e', 5, 'pitr-before')"
sleep 1
instant=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
sleep 1
psql "$logical/$pitr_db" -qX -v ON_ERROR_STOP=1 \
  -c "UPDATE \"Booking\" SET notes = 'pitr-after' WHERE id <= 10" \
  -c "DELETE FROM \"Testimonial\" WHERE content = 'pitr-before'"

echo "== capture ← its schedule: the 32 row changes into one segment"
invoke capture events/scheduled.json | tee "$work/capture-second.json"
"$PGBACKUP_PYTHON" - "$work/capture-second.json" <<'PY'
import json, sys, boto3
report = json.load(open(sys.argv[1]))
assert report["outcome"] == "captured" and "enabled" not in report, report
segment = report["segment"]
# 20 + 10 updates of Booking, one insert and one delete of Testimonial, in 4 transactions
assert segment["changes"] == 32 and segment["transactions"] == 4, segment
tables = {t["table"]: t for t in segment["tables"]}
assert tables["public.Booking"]["updates"] == 30 and tables["public.Testimonial"]["inserts"] == 1, tables
assert 0 < report["oldestUncapturedCommitAgeSeconds"] < 600, report
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:5000", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
keys = {o["Key"] for o in s3.list_objects_v2(Bucket="pgbackup-lambda-e2e", Prefix="changes/").get("Contents", [])}
for key in (f"changes/{segment['id']}.segment", f"changes/{segment['id']}.json"):
    assert key in keys, (key, keys)
stored = s3.head_object(Bucket="pgbackup-lambda-e2e", Key=f"changes/{segment['id']}.segment")["ContentLength"]
assert stored == segment["sizeBytes"], (stored, segment["sizeBytes"])
print(f"segment {segment['id']}: {segment['changes']} changes in {segment['transactions']} transactions, "
      f"{stored} bytes in moto; RPO {report['oldestUncapturedCommitAgeSeconds']} s, slot lag {report['slotHealth']['lagBytes']} bytes")
PY
grep -Eq '"ChangesCaptured":32(\.0)?[,}]' "$work/watch.log" || { echo "no ChangesCaptured metric line" >&2; exit 1; }

echo "== restore ← console payload {\"at\": \"$instant\"} into a new database $pitr_copy"
printf '{"at": "%s", "target": "%s", "confirm": "%s", "createDb": true, "reason": "e2e point in time", "requestedBy": "infra/lambda-e2e.sh"}' \
  "$instant" "$pitr_copy" "$pitr_copy" >"$work/restore-at.json"
invoke restore "$work/restore-at.json" | tee "$work/restored-at.json"
"$PGBACKUP_PYTHON" -c '
import json, sys
outcome = json.load(open(sys.argv[1]))
replayed = outcome["replayed"]
assert replayed["changes"] == 21 and replayed["transactions"] == 2, replayed
from datetime import datetime
assert datetime.fromisoformat(replayed["reachedTime"]) <= datetime.fromisoformat(sys.argv[2]), (replayed, sys.argv[2])
print("replayed", replayed["changes"], "changes, reached", replayed["reachedTime"])' "$work/restored-at.json" "$instant"
state() {
  psql "$logical/$1" -qXAt -v ON_ERROR_STOP=1 -c "SELECT (SELECT count(*) FROM \"Booking\" WHERE notes = 'pitr-before') || ' before, ' \
    || (SELECT count(*) FROM \"Booking\" WHERE notes = 'pitr-after') || ' after, ' \
    || (SELECT count(*) FROM \"Testimonial\" WHERE content = 'pitr-before') || ' testimonial'"
}
echo "source now: $(state "$pitr_db"); restored at $instant: $(state "$pitr_copy")"
[ "$(state "$pitr_copy")" = "20 before, 0 after, 1 testimonial" ] || { echo "the restore to $instant is not the state at $instant" >&2; exit 1; }
psql "$logical/postgres" -qX -c "SELECT pg_drop_replication_slot('$pitr_slot')" >/dev/null
cat "$work/watch-main.log" "$work/watch.log" >"$work/watch-all.log"

echo "== comparing $db and $copy"
count() {
  psql "${admin%/*}/$1" -qXAt -v ON_ERROR_STOP=1 \
    -c "SELECT (SELECT count(*) FROM \"Booking\") || ' bookings, ' || (SELECT count(*) FROM \"User\") || ' users'"
}
source_rows=$(count "$db")
copy_rows=$(count "$copy")
echo "source: $source_rows; restored copy: $copy_rows"
[ -n "$source_rows" ] && [ "$source_rows" = "$copy_rows" ] || { echo "row counts differ" >&2; exit 1; }
grep -h -o '"init_ms":[0-9]*' "$work/watch-all.log" | sed 's/^/cold start: /' || true

echo "== no secret in logs, metrics, responses, webhooks or the bucket"
grep -q '"_aws"' "$work/watch-all.log" || { echo "no metric line was captured" >&2; exit 1; }
grep -q 'backup_failure' "$work/webhook.log" || { echo "no failure webhook was captured" >&2; exit 1; }
"$PGBACKUP_PYTHON" - "$work" <<'PY'
import base64, os, pathlib, sys, boto3
key = os.environ["SENTINEL_MASTER_KEY"]
forms = {"master key (hex)": key.encode(), "master key (first half)": key[:32].encode(),
         "master key (HEX)": key.upper().encode(), "master key (raw)": bytes.fromhex(key),
         "master key (base64)": base64.b64encode(bytes.fromhex(key)),
         "database password": os.environ["SENTINEL_DB_PASSWORD"].encode(),
         "webhook secret": os.environ["SENTINEL_WEBHOOK_SECRET"].encode(),
         "AWS secret access key": os.environ["SENTINEL_AWS_SECRET"].encode()}
artifacts = {}
for path in pathlib.Path(sys.argv[1]).iterdir():
    if path.name not in ("env", "env-pitr", "arns") and path.is_file():  # the inputs themselves hold them
        artifacts[f"file {path.name}"] = path.read_bytes()
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:5000", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
for item in s3.list_objects_v2(Bucket="pgbackup-lambda-e2e").get("Contents", []):
    artifacts[f"s3 {item['Key']}"] = s3.get_object(Bucket="pgbackup-lambda-e2e", Key=item["Key"])["Body"].read()
leaks = [f"{name} in {origin}" for origin, data in artifacts.items() for name, form in forms.items() if form in data]
print(f"searched {len(artifacts)} artifacts ({sum(map(len, artifacts.values()))} bytes) for {len(forms)} secret forms")
if leaks:
    sys.exit("secrets leaked:\n" + "\n".join(leaks))
PY
echo "lambda e2e passed"
