#!/usr/bin/env bash
# Fuzzes every parser that reads bytes from outside (fuzz/fuzz_targets):
# the container header, the whole reader, one sealed chunk, the keyring
# secret, metadata JSON, backup ids, the Lambda events and the pgoutput
# messages change capture reads (docs/PITR.md).
#
#   infra/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 30 s, all targets)
#
# Seeds come from the committed fixtures (golden backup and metadata, the
# event fixtures) and are copied into a scratch corpus each run, so the
# repository never grows. A crash, a panic, a leak of key material (the
# keyring target's property) or an allocation above the cap fails the run;
# the input that did it is left in fuzz/artifacts/<target>/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(container_header container_reader sealed_chunk keyring_secret metadata_json backup_id lambda_events pgoutput_message)

# Allocation cap per input: the reader sizes nothing from unauthenticated
# bytes beyond the header (< 1 KiB) and one chunk (<= 16 MiB + framing);
# the trailer is capped at 256 MiB but can only be reached with the key.
malloc_limit_mb=${FUZZ_MALLOC_LIMIT_MB:-64}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-/var/tmp/pgbackup-fuzz-target}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# libFuzzer's instrumentation needs nightly flags; use a nightly toolchain
# when the machine has one, otherwise let stable accept them.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

corpus_root=$(mktemp -d /tmp/pgbackup-fuzz.XXXXXX)
trap 'rm -rf "$corpus_root"' EXIT
fixtures=$repo/shared/tests/fixtures
for target in "${targets[@]}"; do
  dir=$corpus_root/$target
  mkdir -p "$dir"
  case $target in
    container_header|container_reader)
      cp "$fixtures/golden-v1.backup" "$dir/golden" ;;
    sealed_chunk)
      printf '\x00' > "$dir/empty-position"
      head -c 200 "$fixtures/golden-v1.backup" | tail -c 120 > "$dir/golden-slice" ;;
    keyring_secret)
      printf '%s' 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f > "$dir/bare"
      printf '{"current":"k2","keys":{"k1":"%s","k2":"%s"}}' "$(printf '11%.0s' {1..32})" "$(printf '22%.0s' {1..32})" > "$dir/json"
      printf '{"current":"k1","keys":{"%s":"k1"}}' "$(printf 'ab%.0s' {1..32})" > "$dir/swapped" ;;
    metadata_json)
      cp "$fixtures/golden-v1.json" "$dir/golden" ;;
    backup_id)
      printf 'backup-1795658400000-0badc0de' > "$dir/golden" ;;
    lambda_events)
      cp "$repo"/events/*.json "$dir/"
      cp "$repo"/functions/common/tests/fixtures/*.json "$dir/" ;;
    pgoutput_message)
      # Messages a PostgreSQL 15 server wrote (the decoder's unit tests):
      # a relation, an insert with a NULL, an unchanged-TOAST update, a delete.
      for message in 52000040017075626c69630074006400030169640000000017ffffffff006e616d650000000019ffffffff006269670000000019ffffffff \
          49000040014e00037400000001326e740000000162 55000040014e000374000000013174000000016375 44000040014b00037400000001326e6e \
          420000000001948df80003050341eeaf22000002d8 54000000010000004001; do
        python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]))' "$message" > "$dir/${message:0:12}"
      done ;;
  esac
done

cd "$repo/fuzz"
"${fuzz[@]}" build --release
status=0
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  if ! "${fuzz[@]}" run --release "$target" "$corpus_root/$target" -- \
      -max_total_time="$seconds" -malloc_limit_mb="$malloc_limit_mb" -rss_limit_mb=2048 \
      -timeout=10 -print_final_stats=1 2>"$corpus_root/$target.log"; then
    echo "fuzz target $target FAILED; last lines:" >&2
    tail -n 40 "$corpus_root/$target.log" >&2
    status=1
  else
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$corpus_root/$target.log" | tr '\n' ' '
    echo
  fi
done
exit $status
