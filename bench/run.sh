#!/usr/bin/env bash
# scigate server-core benchmark: scigate vs the official TypeScript SDK server, same run.
#
#   bench/run.sh [PATH_TO_SCIGATE]          (default: ../build/scigate relative to bench/)
#
# Builds nothing C++ (it compiles the small C load generator bench/loadgen.c with gcc and runs
# `npm ci` in bench/ts-server if node_modules is missing). Writes bench/RESULTS.md; raw
# results and server logs are kept in bench/.last-run/.
#
# Knobs (environment):
#   DURATION=5        seconds measured per HTTP cell (each cell is run REPEAT times; median kept)
#   REPEAT=3          repetitions of the HTTP matrix, interleaved scigate/TS
#   CLIENTS="1 16 64 256"
#   STDIO_DURATION=8  seconds measured per stdio run
#   SESSIONS=10000    idle 2025-11-25 sessions for the memory test
#   PIN=1             1: servers on CPU 1, load generator on CPU 0 (taskset); 0: no pinning
#   SG_THREADS=1      scigate [server] threads for the pinned runs (one core => one thread)
#   NICE=-20 as root, else 0: priority of the servers and the load generator (and of this
#                     session's autogroup). On a machine shared with other work this makes both
#                     servers win their core from it equally; NICE=0 measures without.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -ge 1 ]]; then BIN_SRC="$(realpath "$1")"; else BIN_SRC="$HERE/../build/scigate"; fi
DURATION=${DURATION:-5}
REPEAT=${REPEAT:-3}
CLIENTS=${CLIENTS:-"1 16 64 256"}
STDIO_DURATION=${STDIO_DURATION:-8}
SESSIONS=${SESSIONS:-10000}
PIN=${PIN:-1}
SG_THREADS=${SG_THREADS:-1}
if [[ $EUID -eq 0 ]]; then NICE=${NICE:--20}; else NICE=${NICE:-0}; fi
WORK="$HERE/.last-run"
RAW="$WORK/raw.jsonl"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# prerequisites
[[ -x "$BIN_SRC" ]] || fail "scigate binary not found at $BIN_SRC (pass its path as \$1)"
command -v gcc >/dev/null || fail "gcc is required"
command -v node >/dev/null || fail "node is required"
command -v python3 >/dev/null || fail "python3 is required"
NPROC=$(nproc)
if [[ "$PIN" == 1 ]]; then
  command -v taskset >/dev/null || fail "taskset is required for PIN=1 (or run with PIN=0)"
  [[ $NPROC -ge 2 ]] || { log "only $NPROC CPU: disabling pinning"; PIN=0; }
fi
PRE=()
if [[ "$NICE" != 0 ]]; then
  nice -n "$NICE" true 2>/dev/null && [[ "$(nice -n "$NICE" nice)" == "$NICE" ]] || fail "cannot set NICE=$NICE (needs root for < 0)"
  PRE=(nice -n "$NICE")
  # With autogroup scheduling (kernel.sched_autogroup_enabled=1) nice only ranks processes
  # within one session; other sessions' work is ranked by the autogroup's own nice value. Set
  # this session's (restored on exit) so the servers really do win the CPU from other work.
  if [[ -w /proc/self/autogroup && "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" == 1 ]]; then
    AUTOGROUP_NICE_WAS=$(sed -n 's/.* nice \(-\{0,1\}[0-9]*\)$/\1/p' /proc/self/autogroup)
    echo "$NICE" >/proc/self/autogroup 2>/dev/null || AUTOGROUP_NICE_WAS=""
  fi
fi
if [[ "$PIN" == 1 ]]; then
  SRV_CPU=("${PRE[@]}" taskset -c 1)
  LG_CPU=("${PRE[@]}" taskset -c 0)
  PIN_DESC="servers pinned to CPU 1, load generator to CPU 0 (taskset); scigate threads = $SG_THREADS"
else
  SRV_CPU=("${PRE[@]}")
  LG_CPU=("${PRE[@]}")
  PIN_DESC="no pinning; servers and load generator share all $NPROC CPUs"
fi
[[ "$NICE" != 0 ]] && PIN_DESC="$PIN_DESC; servers and load generator at nice $NICE"

rm -rf "$WORK"
mkdir -p "$WORK"
: >"$RAW"

# Run a private copy of the binary: a rebuild of build/scigate during the run cannot affect us.
cp "$BIN_SRC" "$WORK/scigate"
SG="$WORK/scigate"

log "compiling the load generator"
gcc -O2 -Wall -Wextra -o "$WORK/loadgen" "$HERE/loadgen.c"
LG="$WORK/loadgen"

if [[ ! -d "$HERE/ts-server/node_modules/@modelcontextprotocol/server" ]]; then
  log "installing the TypeScript server's pinned dependencies (npm ci)"
  (cd "$HERE/ts-server" && npm ci --no-audit --no-fund >&2)
fi

# ---------------------------------------------------------------------------------------------
# servers
PIDS=()
cleanup() {
  if [[ -n "${AUTOGROUP_NICE_WAS:-}" ]]; then echo "$AUTOGROUP_NICE_WAS" >/proc/self/autogroup 2>/dev/null || true; fi
  for p in "${PIDS[@]:-}"; do
    [[ -n "$p" ]] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [[ -n "$p" ]] && wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

"$SG" init "$WORK/sg" >"$WORK/init.txt"
KEY=$(sed -n '/Demo API key for user/{n;p}' "$WORK/init.txt" | tr -d ' ')
[[ "$KEY" == sgk_* ]] || fail "could not read the demo API key from 'scigate init' output"

# make_config NAME LOG_LEVEL THREADS(0 = default) -> path
make_config() {
  local f="$WORK/sg/$1.toml"
  sed -e "s/^log_level = .*/log_level = \"$2\"/" "$WORK/sg/scigate.toml" >"$f"
  if [[ "$3" != 0 ]]; then sed -i "s/^\[server\]$/[server]\nthreads = $3/" "$f"; fi
  echo "$f"
}

# wait_port FILE PID -> prints port
wait_port() {
  for _ in $(seq 1 200); do
    if [[ -s "$1" ]]; then cat "$1"; return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# start_sg NAME CONFIG PIN(1/0): sets SG_PID, SG_PORT
start_sg() {
  local pf="$WORK/$1.port" pre=("${PRE[@]}")
  rm -f "$pf"
  [[ "$3" == 1 ]] && pre=("${SRV_CPU[@]}")
  "${pre[@]}" "$SG" serve --config "$2" --http 127.0.0.1:0 --port-file "$pf" 2>"$WORK/$1.log" &
  SG_PID=$!
  PIDS+=("$SG_PID")
  SG_PORT=$(wait_port "$pf" "$SG_PID") || fail "scigate ($1) did not start; see $WORK/$1.log"
}

# start_ts NAME PIN(1/0): sets TS_PID, TS_PORT
start_ts() {
  local pf="$WORK/$1.port" pre=("${PRE[@]}")
  rm -f "$pf"
  [[ "$2" == 1 ]] && pre=("${SRV_CPU[@]}")
  "${pre[@]}" node "$HERE/ts-server/server.mjs" --http 0 --port-file "$pf" 2>"$WORK/$1.log" &
  TS_PID=$!
  PIDS+=("$TS_PID")
  TS_PORT=$(wait_port "$pf" "$TS_PID") || fail "TS server ($1) did not start; see $WORK/$1.log"
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------------
# load
BODY='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
STDIO_BODY='{"jsonrpc":"2.0","id":@ID@,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
HDRS=(--header 'Content-Type: application/json' --header 'Accept: application/json, text/event-stream'
      --header 'MCP-Protocol-Version: 2026-07-28' --header 'Mcp-Method: tools/call' --header 'Mcp-Name: echo')

summ() {
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f calls/s, p50 %.0f us, p99 %.0f us, errors %d, server CPU %.0f%%" % (r["calls_per_s"], r["p50_us"], r["p99_us"], r["errors"], r["server_cpu_pct"]))' "$1"
}

# http_run SERVER(scigate|ts) VARIANT CLIENTS REP PORT PID DURATION WARMUP PIN(1/0)
http_run() {
  local auth=() pre=("${PRE[@]}") out
  [[ "$1" == scigate ]] && auth=(--header "Authorization: Bearer $KEY")
  [[ "$9" == 1 ]] && pre=("${LG_CPU[@]}")
  out=$("${pre[@]}" "$LG" http --port "$5" --pid "$6" --conns "$3" --duration "$7" --warmup "$8" \
        "${auth[@]}" "${HDRS[@]}" --body "$BODY")
  printf '{"kind":"http","server":"%s","variant":"%s","clients":%s,"rep":%s,"r":%s}\n' "$1" "$2" "$3" "$4" "$out" >>"$RAW"
  log "  http $1/$2 clients=$3 rep=$4: $(summ "$out")"
}

# stdio_run SERVER VARIANT OUTSTANDING WARMUP -- CMD...
stdio_run() {
  local srv=$1 var=$2 n=$3 wu=$4 out
  shift 5
  out=$("${LG_CPU[@]}" "$LG" stdio --outstanding "$n" --duration "$STDIO_DURATION" --warmup "$wu" \
        --body "$STDIO_BODY" -- "${SRV_CPU[@]}" "$@" 2>>"$WORK/stdio-$srv.log")
  printf '{"kind":"stdio","server":"%s","variant":"%s","clients":%s,"rep":1,"r":%s}\n' "$srv" "$var" "$n" "$out" >>"$RAW"
  log "  stdio $srv outstanding=$n: $(summ "$out")"
}

meta() { printf '{"kind":"meta","key":"%s","value":%s}\n' "$1" "$2" >>"$RAW"; }
jstr() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

T_START=$(date +%s)
meta date "$(jstr "$(date -u '+%Y-%m-%d %H:%M:%S UTC')")"
meta nproc "$NPROC"
meta cpu "$(jstr "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')")"
meta mem "$(jstr "$(free -g | awk '/^Mem:/{print $2" GiB"}')")"
meta kernel "$(jstr "$(uname -sr)")"
meta os "$(jstr "$(. /etc/os-release && echo "$PRETTY_NAME")")"
meta loadavg_start "$(jstr "$(cut -d' ' -f1-3 /proc/loadavg)")"
meta scigate_version "$(jstr "$("$SG" version 2>&1 | head -1)")"
meta scigate_binary "$(jstr "$BIN_SRC")"
meta git "$(jstr "$(cd "$HERE/.." && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$HERE/.." && [[ -n "$(git status --porcelain 2>/dev/null | grep -v '^?? bench/' | head -1)" ]] && echo ' (dirty tree)')")"
meta node_version "$(jstr "$(node --version)")"
meta sdk_version "$(jstr "$(node -p "'@modelcontextprotocol/server ' + require('$HERE/ts-server/node_modules/@modelcontextprotocol/server/package.json').version + ', @modelcontextprotocol/node ' + require('$HERE/ts-server/node_modules/@modelcontextprotocol/node/package.json').version + ', zod ' + require('$HERE/ts-server/node_modules/zod/package.json').version")")"
meta gcc "$(jstr "$(gcc --version | head -1)")"
meta pinning "$(jstr "$PIN_DESC")"
meta duration "$DURATION"
meta repeat "$REPEAT"
meta stdio_duration "$STDIO_DURATION"

# ---- 1. HTTP matrix: both servers up side by side, interleaved runs --------------------------
log "HTTP matrix: clients [$CLIENTS], $REPEAT x ${DURATION}s per cell; $PIN_DESC"
SG_MAIN_CFG=$(make_config main warn "$SG_THREADS")
start_sg sg-main "$SG_MAIN_CFG" 1
SGM_PID=$SG_PID SGM_PORT=$SG_PORT
start_ts ts-main 1
TSM_PID=$TS_PID TSM_PORT=$TS_PORT
sleep 1
meta sg_idle_rss_kb "$(rss_kb "$SGM_PID")"
meta ts_idle_rss_kb "$(rss_kb "$TSM_PID")"
log "idle RSS: scigate $(rss_kb "$SGM_PID") KiB, TS $(rss_kb "$TSM_PID") KiB"

log "warming up (JIT for node)"
http_run scigate warmup 64 0 "$SGM_PORT" "$SGM_PID" 2 1 1
http_run ts warmup 64 0 "$TSM_PORT" "$TSM_PID" 5 1 1
for rep in $(seq 1 "$REPEAT"); do
  for n in $CLIENTS; do
    http_run scigate main "$n" "$rep" "$SGM_PORT" "$SGM_PID" "$DURATION" 1 1
    http_run ts main "$n" "$rep" "$TSM_PORT" "$TSM_PID" "$DURATION" 1 1
  done
done
meta sg_loaded_hwm_kb "$(awk '/^VmHWM:/{print $2}' "/proc/$SGM_PID/status")"
meta ts_loaded_hwm_kb "$(awk '/^VmHWM:/{print $2}' "/proc/$TSM_PID/status")"
stop_pid "$SGM_PID"
stop_pid "$TSM_PID"

# ---- 2. variants at 64 clients ------------------------------------------------------------------
log "variants at 64 clients"
# default log level (an audit line per call to stderr, here a file)
start_sg sg-info "$(make_config info info "$SG_THREADS")" 1
http_run scigate warmup 64 0 "$SG_PORT" "$SG_PID" 1 1 1
http_run scigate "log_level=info" 64 1 "$SG_PORT" "$SG_PID" "$DURATION" 1 1
stop_pid "$SG_PID"
# one audit line per call: keep the count and a sample, not tens of MB
meta info_log_lines "$(wc -l <"$WORK/sg-info.log")"
head -n 20 "$WORK/sg-info.log" >"$WORK/sg-info.log.head" && rm -f "$WORK/sg-info.log"
if [[ "$PIN" == 1 ]]; then
  # default thread count (cores, min 2) squeezed onto the one pinned core
  start_sg sg-threads "$(make_config threads warn 0)" 1
  http_run scigate "threads=default, pinned" 64 1 "$SG_PORT" "$SG_PID" "$DURATION" 1 1
  stop_pid "$SG_PID"
  # everything unpinned, as in the issue's orientation figure (load generator on the same cores)
  start_sg sg-unpinned "$(make_config unpinned warn 0)" 0
  http_run scigate "unpinned, threads=default" 64 1 "$SG_PORT" "$SG_PID" "$DURATION" 1 0
  stop_pid "$SG_PID"
  start_ts ts-unpinned 0
  http_run ts warmup 64 0 "$TS_PORT" "$TS_PID" 5 1 0
  http_run ts "unpinned" 64 1 "$TS_PORT" "$TS_PID" "$DURATION" 1 0
  stop_pid "$TS_PID"
fi

# ---- 3. stdio ------------------------------------------------------------------------------------
log "stdio: 1 and 64 requests outstanding, ${STDIO_DURATION}s each"
SG_STDIO_CFG=$(make_config stdio warn "$SG_THREADS")
for n in 1 64; do
  stdio_run scigate main "$n" 2 -- "$SG" serve --config "$SG_STDIO_CFG" --stdio
  stdio_run ts main "$n" 5 -- node "$HERE/ts-server/server.mjs" --stdio
done

# ---- 4. memory: idle sessions --------------------------------------------------------------------
log "memory: $SESSIONS idle 2025-11-25 sessions"
start_sg sg-sessions "$(make_config sessions warn "$SG_THREADS")" 1
sleep 1
out=$("${LG_CPU[@]}" python3 "$HERE/sessions.py" --port "$SG_PORT" --pid "$SG_PID" --key "$KEY" --count "$SESSIONS") \
  || log "session test reported a problem: $out"
printf '{"kind":"sessions","server":"scigate","r":%s}\n' "$out" >>"$RAW"
log "  $out"
stop_pid "$SG_PID"

meta loadavg_end "$(jstr "$(cut -d' ' -f1-3 /proc/loadavg)")"
meta wall_s "$(( $(date +%s) - T_START ))"

rm -f "$SG"  # the private copy of the binary (~100 MB)

# ---- report ----------------------------------------------------------------------------------------
python3 "$HERE/report.py" "$RAW" >"$HERE/RESULTS.md"
log "wrote $HERE/RESULTS.md (raw: $RAW) in $(( $(date +%s) - T_START ))s"
if grep -q '"errors": *[1-9]' "$RAW" || grep -q '"sample_failed": *[1-9]' "$RAW"; then
  log "some runs had errors: those figures are invalid (see RESULTS.md)"
  exit 1
fi
