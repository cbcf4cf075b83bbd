#!/usr/bin/env bash
# The whole test suite; CI runs exactly this (.ci/run). On a fresh Debian 12 machine as root:
#   1. installs build and test dependencies (Debian packages, pinned npm packages);
#   2. builds once (RelWithDebInfo, ccache + Ninja) and runs every CTest test: unit,
#      integration against the real binary, and the official MCP clients;
#   3. builds with clang + ASan/UBSan and runs the unit and integration tests again under them;
#   4. runs the libFuzzer target over the message handler for a bounded time.
# Environment: SCIGATE_FUZZ_SECONDS (default 60), SCIGATE_SKIP_SANITIZERS=1, SCIGATE_SKIP_CLIENTS=1.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT

step() { printf '\n=== %s ===\n' "$*"; }
fail() { echo "test.sh: $*" >&2; exit 1; }

# ctest's own closing line, folded into one total at the end.
run_ctest() {
  local dir=$1; shift
  local log
  log=$(mktemp)
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" "$@" 2>&1 | tee "$log"
  local line
  line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1)
  rm -f "$log"
  [[ -n "$line" ]] || { echo "0 0" >>"$summary"; return 1; }
  local failed total
  failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
  total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$line")
  echo "$((total - failed)) $failed" >>"$summary"
  [[ "$failed" == 0 ]]
}

step "dependencies"
scripts/install-deps.sh --test || fail "installing dependencies failed"

status=0
step "build (RelWithDebInfo)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo || fail "configure failed"
cmake --build build || fail "build failed"

step "tests: unit, integration, clients"
labels='unit|integration'
[[ "${SCIGATE_SKIP_CLIENTS:-0}" == 1 ]] || labels="$labels|clients"
run_ctest build -L "$labels" || status=1

if [[ "${SCIGATE_SKIP_SANITIZERS:-0}" != 1 ]]; then
  step "build (clang, ASan + UBSan, fuzzer)"
  CC=clang-14 CXX=clang++-14 cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSCIGATE_SANITIZE=ON -DSCIGATE_FUZZ=ON || fail "sanitizer configure failed"
  cmake --build build-asan || fail "sanitizer build failed"

  step "tests under ASan/UBSan: unit, integration"
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:halt_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  run_ctest build-asan -L 'unit|integration' || status=1

  # fuzz TARGET CORPUS_DIR SECONDS MAX_LEN: a copy of the corpus, so the tree stays clean.
  fuzz() {
    local corpus
    corpus=$(mktemp -d)
    cp "$2"/* "$corpus"/
    if "build-asan/tests/fuzz/$1" -max_total_time="$3" -max_len="$4" -timeout=10 -print_final_stats=1 \
        "$corpus" 2>&1 | tail -15; then
      echo "1 0" >>"$summary"
    else
      echo "0 1" >>"$summary"; status=1
    fi
    rm -rf "$corpus"
  }
  step "fuzz the message handler (${SCIGATE_FUZZ_SECONDS:-60} s)"
  fuzz fuzz_message_handler tests/fuzz/corpus "${SCIGATE_FUZZ_SECONDS:-60}" 4096
  step "fuzz the OpenQASM parser and simulator (${SCIGATE_FUZZ_QASM_SECONDS:-30} s)"
  fuzz fuzz_qasm tests/fuzz/corpus_qasm "${SCIGATE_FUZZ_QASM_SECONDS:-30}" 8192
fi

read -r passed failed < <(awk '{p+=$1; f+=$2} END {print p+0, f+0}' "$summary")
echo
echo "$passed passed, $failed failed"
exit $status
