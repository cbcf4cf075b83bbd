#!/usr/bin/env bash
# Self-test of the inference test double under the benchmark's load: N concurrent SSE chat
# streams (curl --parallel), the double's peak RSS and thread count while they run.
#
#   bench/inference/double_streams.sh [BUILD_DIR] [N] [TOKENS] [INTERVAL_MS] [FLAVOR]
#   (defaults: build 1000 30 100 vllm)
#
# Prints one line per run; exits non-zero unless every stream ended with "data: [DONE]".
set -euo pipefail
build=${1:-build}
n=${2:-1000}
tokens=${3:-30}
interval=${4:-100}
flavor=${5:-vllm}
bin="$build/tests/scigate_inference_double"
[[ -x $bin ]] || { echo "missing $bin (ninja -C $build scigate_inference_double)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/scigate-double-streams.XXXXXX)
"$bin" --flavor "$flavor" --threads 2 > "$work/stdout" 2> "$work/stderr" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do [[ -s $work/stdout ]] && break; sleep 0.05; done
port=$(awk '/^listening /{print $2; exit}' "$work/stdout")
[[ -n $port ]] || { echo "the double did not start" >&2; cat "$work/stderr" >&2; exit 1; }
base="http://127.0.0.1:$port"
curl -sf -X POST "$base/_control" -d "{\"token_interval_ms\":$interval,\"completion_tokens\":$tokens}"

printf '%s' '{"model":"test-model","messages":[{"role":"user","content":"Hello, world!"}],"stream":true}' > "$work/body.json"
# curl runs at most 300 transfers in parallel per process: 250 per process.
per=250
for i in $(seq "$n"); do
  cfg="$work/curl.$(( (i - 1) / per )).cfg"
  # "next": options such as data-binary would otherwise accumulate across the URLs.
  if (( (i - 1) % per > 0 )); then echo next >> "$cfg"; fi
  printf 'url = "%s/v1/chat/completions"\nheader = "Content-Type: application/json"\ndata-binary = "@%s/body.json"\noutput = "%s/out.%d"\n' \
    "$base" "$work" "$work" "$i" >> "$cfg"
done

idle_rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
start=$(date +%s.%N)
cpids=()
for cfg in "$work"/curl.*.cfg; do
  curl -s --no-progress-meter --no-buffer --parallel --parallel-immediate --parallel-max "$per" -K "$cfg" &
  cpids+=($!)
done
peak=0
threads=0
alive() { for c in "${cpids[@]}"; do kill -0 "$c" 2>/dev/null && return 0; done; return 1; }
while alive; do
  rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
  if (( rss > peak )); then peak=$rss; fi
  threads=$(awk '/Threads/{print $2}' "/proc/$pid/status")
  sleep 0.05
done
for c in "${cpids[@]}"; do wait "$c" || true; done
secs=$(echo "$(date +%s.%N) - $start" | bc)
done_count=$( (grep -lx "data: \[DONE\]" "$work"/out.* 2>/dev/null || true) | wc -l)
stats=$(curl -sf "$base/_control/stats")
max_in_flight=$(echo "$stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["max_in_flight"])')
echo "flavor=$flavor streams=$n tokens=$tokens interval_ms=$interval seconds=$secs complete=$done_count" \
     "max_in_flight=$max_in_flight idle_rss_kib=$idle_rss peak_rss_kib=$peak threads=$threads"
[[ -z ${DEBUG:-} ]] || curl -s "$base/_control/stats"
[[ $done_count -eq $n ]]
