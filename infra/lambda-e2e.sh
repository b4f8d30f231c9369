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
for function in create verify restore prune admin rotate; do
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

echo "== comparing $db and $copy"
count() {
  psql "${admin%/*}/$1" -qXAt -v ON_ERROR_STOP=1 \
    -c "SELECT (SELECT count(*) FROM \"Booking\") || ' bookings, ' || (SELECT count(*) FROM \"User\") || ' users'"
}
source_rows=$(count "$db")
copy_rows=$(count "$copy")
echo "source: $source_rows; restored copy: $copy_rows"
[ -n "$source_rows" ] && [ "$source_rows" = "$copy_rows" ] || { echo "row counts differ" >&2; exit 1; }
grep -h -o '"init_ms":[0-9]*' "$work/watch.log" | sed 's/^/cold start: /' || true

echo "== no secret in logs, metrics, responses, webhooks or the bucket"
grep -q '"_aws"' "$work/watch.log" || { echo "no metric line was captured" >&2; exit 1; }
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
    if path.name not in ("env", "arns") and path.is_file():  # the inputs themselves hold them
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
