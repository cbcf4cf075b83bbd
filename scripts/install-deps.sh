#!/usr/bin/env bash
# Installs everything scigate needs to build, run and test, from Debian 12 packages and (for the
# client tests) the npm registry. Idempotent: packages already present are skipped.
#   scripts/install-deps.sh            build + runtime
#   scripts/install-deps.sh --test     also the test tools (clang for fuzzing, node packages, Slurm)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

pkgs=(build-essential cmake ninja-build ccache pkg-config git ca-certificates curl
      libboost1.81-dev nlohmann-json3-dev libcurl4-openssl-dev libssl-dev libsqlite3-dev sqlite3
      libspdlog-dev libfmt-dev catch2
      libtomlplusplus-dev  # config and policy files are TOML; toml++ reports line:column on errors
      libvalijson-dev      # JSON Schema validation of tool arguments (draft 7), header-only
      libjemalloc-dev)     # allocator for the server binary: ~25% more calls/s than glibc malloc
if (( want_test )); then
  pkgs+=(clang-14 libclang-rt-14-dev  # libFuzzer target and sanitizer runtime
         nodejs npm                   # official MCP clients from npm
         procps psmisc openssl  # openssl: self-signed certificates for the TLS test
         slurm-wlm slurmrestd munge  # a real single-node Slurm for the scheduler tests (scripts/slurm/);
         slurm-wlm-jwt-plugin        # named: it is only a Recommends, and the JWT REST tests need it
         bubblewrap                  # the local executor's sandbox, when present
         nginx                       # the data-staging tests' HTTP server (tests/support/nginx_server; started on a free port)
         python3-numpy)              # the independent reference simulator of tests/quantum/
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from outside Debian's packages on some machines; accept an existing install.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -ra missing <<<"${missing[*]}"
if (( ${#missing[@]} )); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if (( want_test )); then
  (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
fi
