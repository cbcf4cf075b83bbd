#!/usr/bin/env bash
# How fast `scigate audit verify` checks a large audit log (the target is >= 200,000 records/s).
# Builds a log of N records (default 1,000,000) through the real audit writer, with checkpoints
# every 1000 records, then times `scigate audit verify` (chain and checkpoints) and the export
# and offline verification of the same log.
#
#   bench/audit_verify.sh [N] [BUILD_DIR]
set -euo pipefail
N=${1:-1000000}
BUILD=${2:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ninja -C "$BUILD" scigate scigate_audit_gen >/dev/null
DIR=$(mktemp -d /tmp/scigate-audit-bench.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
"$BUILD/scigate" init "$DIR" >/dev/null
echo "generating $N records in $DIR ..."
t0=$(date +%s.%N)
"$BUILD/tests/scigate_audit_gen" "$DIR/scigate.toml" "$N" 2>/dev/null
t1=$(date +%s.%N)
printf 'write:   %.2f s (%.0f records/s)\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$N / ($t1 - $t0)" | bc -l)"
printf 'db size: %s\n' "$(du -h "$DIR/scigate.db" | cut -f1)"

run() {  # label, command...
  local label=$1
  shift
  local s e
  s=$(date +%s.%N)
  "$@" >"$DIR/out" 2>&1 || { cat "$DIR/out"; exit 1; }
  e=$(date +%s.%N)
  printf '%-30s %.2f s  %.0f records/s   (%s)\n' "$label:" "$(echo "$e - $s" | bc)" \
    "$(echo "$N / ($e - $s)" | bc -l)" "$(head -1 "$DIR/out")"
}
sync
run "verify" "$BUILD/scigate" audit verify --config "$DIR/scigate.toml"
run "verify (again)" "$BUILD/scigate" audit verify --config "$DIR/scigate.toml"
run "export" "$BUILD/scigate" audit export --config "$DIR/scigate.toml" --output "$DIR/export.jsonl"
"$BUILD/scigate" audit pubkey --config "$DIR/scigate.toml" >"$DIR/pub.pem" 2>/dev/null
run "verify --export" "$BUILD/scigate" audit verify --export "$DIR/export.jsonl" \
  --checkpoints "$DIR/audit-checkpoints.jsonl" --pubkey "$DIR/pub.pem"
# The same records written with spaces after separators (as a tool that re-serialises JSON
# would): not the exact export form, so every line takes the full JSON parse. The ratio is the
# fast export reader's gain; the verdict must be the same.
python3 - "$DIR/export.jsonl" "$DIR/export-spaced.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as dst:
    for line in src:
        dst.write(json.dumps(json.loads(line), ensure_ascii=False) + "\n")
PY
run "verify --export (full parse)" "$BUILD/scigate" audit verify --export "$DIR/export-spaced.jsonl" \
  --checkpoints "$DIR/audit-checkpoints.jsonl" --pubkey "$DIR/pub.pem"
