#!/usr/bin/env bash
# scripts/slurm/stop.sh STATE_DIR [--purge]
# Stops what scripts/slurm/start.sh STATE_DIR started, and nothing else: each daemon by the PID
# in STATE_DIR/run/*.pid, after checking that the PID still runs the expected program (a PID
# can be reused). Jobs are cancelled first: with proctrack/linuxproc a job's slurmstepd
# outlives slurmd. Idempotent: a second stop finds nothing to do. --purge then deletes
# STATE_DIR so the next start is from scratch.
set -uo pipefail
export PATH=$PATH:/usr/sbin:/sbin
STATE=${1:?usage: $0 STATE_DIR [--purge]}
PURGE=0; [[ "${2:-}" == "--purge" ]] && PURGE=1
if [[ ! -d $STATE/run ]]; then
  echo "stop.sh: nothing started in $STATE"
  (( PURGE )) && [[ -d $STATE ]] && rm -rf "$STATE"
  exit 0
fi
RUN=$STATE/run
SKIPPED=0

alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$RUN/slurmctld.pid" && [[ -s $STATE/etc/slurm.conf ]]; then
  export SLURM_CONF=$STATE/etc/slurm.conf
  mapfile -t jobs < <(timeout 10 squeue -h -o %i 2>/dev/null)
  if (( ${#jobs[@]} )); then
    timeout 10 scancel "${jobs[@]}" || true
    for ((i = 0; i < 100; i++)); do
      [[ -z $(timeout 5 squeue -h -t R,CG -o %i 2>/dev/null) ]] && break
      sleep 0.1
    done
  fi
fi

# Each daemon takes a second or two to shut down: signal all of them, then wait for all.
declare -A STOPPING=()  # pid -> "name pidfile"
signal_one() { # name pidfile program
  local name=$1 pf=$2 exe pid
  exe=$(readlink -f "$(command -v "$3" || echo "/usr/sbin/$3")")
  [[ -s $pf ]] || return 0
  pid=$(cat "$pf")
  if ! kill -0 "$pid" 2>/dev/null; then rm -f "$pf"; return 0; fi
  if [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" != "$exe" ]]; then
    echo "stop.sh: not stopping $name: pid $pid is not $exe"; SKIPPED=1; return 0
  fi
  kill -TERM "$pid" && STOPPING[$pid]="$name $pf"
}

signal_one slurmrestd-jwt   "$RUN/slurmrestd-jwt.pid"   slurmrestd
signal_one slurmrestd-local "$RUN/slurmrestd-local.pid" slurmrestd
signal_one slurmd           "$RUN/slurmd.pid"           slurmd
signal_one slurmctld        "$RUN/slurmctld.pid"        slurmctld
signal_one munged           "$RUN/munged.pid"           munged
for ((i = 0; i < 100 && ${#STOPPING[@]}; i++)); do
  for pid in "${!STOPPING[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      read -r name pf <<<"${STOPPING[$pid]}"
      echo "stop.sh: $name ($pid) stopped"; rm -f "$pf"; unset "STOPPING[$pid]"
    fi
  done
  (( ${#STOPPING[@]} )) && sleep 0.1
done
for pid in "${!STOPPING[@]}"; do
  read -r name pf <<<"${STOPPING[$pid]}"
  kill -KILL "$pid" 2>/dev/null; echo "stop.sh: $name ($pid) killed after 10 s"; rm -f "$pf"
done
rm -f "$RUN/rest/slurmrestd.sock" "$RUN/munge/munge.socket.2" "$RUN/munge/munge.socket.2.lock"
if (( PURGE )); then
  if (( SKIPPED )); then echo "stop.sh: not purging $STATE: some PID files did not match" >&2; exit 1; fi
  rm -rf "$STATE"
fi
exit 0
