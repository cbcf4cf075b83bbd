#!/usr/bin/env bash
# Quick start on a fresh Debian 12 machine (as root): install what is needed, build, create a
# demo configuration in ./demo on the first run, and serve MCP over HTTP on 127.0.0.1:8750.
#   SCIGATE_DEMO_DIR   where the demo config and database live (default ./demo)
#   SCIGATE_LISTEN     HOST:PORT to serve on (default from the config: 127.0.0.1:8750)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target scigate

demo="${SCIGATE_DEMO_DIR:-demo}"
if [[ ! -f "$demo/scigate.toml" ]]; then
  build/scigate init "$demo"
else
  echo "Using the existing $demo/scigate.toml. A fresh key for user 'demo' (shown once):"
  build/scigate key create --config "$demo/scigate.toml" --principal demo --description "quickstart"
fi

cat <<TXT

scigate is starting on http://${SCIGATE_LISTEN:-127.0.0.1:8750}/mcp (Ctrl-C stops it).
  Try it:   curl -s http://${SCIGATE_LISTEN:-127.0.0.1:8750}/healthz
  stdio:    build/scigate serve --config $demo/scigate.toml --stdio
  clients:  see examples/ (Claude Code, OpenCode, a lab controller)
TXT
args=(serve --config "$demo/scigate.toml")
[[ -n "${SCIGATE_LISTEN:-}" ]] && args+=(--http "$SCIGATE_LISTEN")
exec build/scigate "${args[@]}"
