#!/usr/bin/env bash
# Runs every test of the workspace: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
