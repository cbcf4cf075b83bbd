#!/usr/bin/env bash
# scripts/slurm/start.sh STATE_DIR [--no-rest]
# A single-node Slurm 22.05 (Debian 12 packages) without systemd, for tests, benchmarks and
# trying scigate: munged, slurmctld, slurmd and two slurmrestd daemons (a unix socket with
# rest_auth/local, and 127.0.0.1:REST_PORT with rest_auth/jwt). Everything Slurm and munge
# write lives under STATE_DIR; only useradd touches /etc (REST_USER and JOB_USER, if missing).
# Must run as root (SlurmUser=root: slurmd starts jobs as their owners).
#
# Idempotent: daemons whose PID file under STATE_DIR/run names a live process are left alone;
# a changed slurm.conf is applied with `scontrol reconfigure`. Ports are chosen once and kept
# in STATE_DIR/etc/ports.env, so a second start reuses them.
#
# Environment knobs (first start only, then remembered):
#   CTLD_PORT, SLURMD_PORT, REST_PORT  default 6817, 6818, 6820
#   MIN_JOB_AGE   seconds a finished job stays in slurmctld (default 300)
#   REST_USER     unprivileged user the JWT slurmrestd drops to (default slurmrest)
#   JOB_USER      normal user owning the local-auth slurmrestd (and its jobs) (default agent)
# On success the last lines are KEY=VALUE pairs a program can read (SLURM_CONF=..., ...).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons live in sbin, often not on a user's PATH

STATE=${1:?usage: $0 STATE_DIR [--no-rest]}
WANT_REST=1; [[ "${2:-}" == "--no-rest" ]] && WANT_REST=0
[[ $(id -u) -eq 0 ]] || { echo "start.sh: must run as root (SlurmUser=root)" >&2; exit 1; }
for b in munged slurmctld slurmd scontrol sinfo; do
  command -v "$b" >/dev/null || { echo "start.sh: $b not found (scripts/install-deps.sh --test)" >&2; exit 2; }
done

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
ETC=$STATE/etc RUN=$STATE/run LOG=$STATE/log SPOOL=$STATE/spool MUNGE=$STATE/munge
mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$MUNGE"
chmod 755 "$STATE" "$ETC" "$RUN" "$LOG" "$SPOOL"

if [[ -s $ETC/ports.env ]]; then
  # shellcheck disable=SC1091
  source "$ETC/ports.env"
else
  CTLD_PORT=${CTLD_PORT:-6817} SLURMD_PORT=${SLURMD_PORT:-6818} REST_PORT=${REST_PORT:-6820}
  MIN_JOB_AGE=${MIN_JOB_AGE:-300}
  REST_USER=${REST_USER:-slurmrest} JOB_USER=${JOB_USER:-agent}
  printf 'CTLD_PORT=%s\nSLURMD_PORT=%s\nREST_PORT=%s\nMIN_JOB_AGE=%s\nREST_USER=%s\nJOB_USER=%s\n' \
    "$CTLD_PORT" "$SLURMD_PORT" "$REST_PORT" "$MIN_JOB_AGE" "$REST_USER" "$JOB_USER" > "$ETC/ports.env"
fi

alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { # description seconds command...
  local desc=$1 t=$2 i; shift 2
  for ((i = 0; i < t * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "start.sh: timed out waiting for $desc (logs in $LOG)" >&2; return 1
}
# Several clusters may start at once (parallel tests): useradd takes a lock on /etc/passwd and
# fails when another one just created the same user, so check again after a failure.
ensure_user() { # name useradd-options...
  local u=$1; shift
  id "$u" >/dev/null 2>&1 && return 0
  useradd "$@" "$u" 2>/dev/null || { sleep 0.5; id "$u" >/dev/null 2>&1; }
}

# slurmrestd refuses to run as root or as SlurmUser: it needs users of its own.
ensure_user "$REST_USER" --system --no-create-home --shell /usr/sbin/nologin
ensure_user "$JOB_USER" --create-home --shell /bin/bash

# --- munge: a key and a socket of this cluster's own ------------------------------------
chmod 700 "$MUNGE"
[[ -s $MUNGE/munge.key ]] || dd if=/dev/urandom of="$MUNGE/munge.key" bs=1 count=128 status=none
chmod 400 "$MUNGE/munge.key"
# munged wants a socket directory that is not world-writable, and every client (the daemons,
# the REST users, the job user) must be able to reach it.
mkdir -p "$RUN/munge"; chmod 755 "$RUN/munge"
MSOCK=$RUN/munge/munge.socket.2
if ! alive "$RUN/munged.pid"; then
  rm -f "$MSOCK" "$MSOCK.lock"
  munged --force --socket="$MSOCK" --key-file="$MUNGE/munge.key" \
         --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$MUNGE/munged.seed"
fi
wait_for munged 10 munge -S "$MSOCK" -n

# --- slurm.conf ----------------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 512 ))
[[ -s $ETC/jwt_hs256.key ]] || dd if=/dev/urandom of="$ETC/jwt_hs256.key" bs=32 count=1 status=none
chmod 600 "$ETC/jwt_hs256.key"
: > "$ETC/plugstack.conf"
# Why these settings (see docs/SLURM.md): no cgroups, no slurmdbd (finished jobs are read from
# jobcomp/filetxt with `sacct -c`), DefMemPerCPU so one job does not take the node's memory,
# NodeAddr=127.0.0.1 so nothing leaves the loopback interface.
cat > "$ETC/slurm.conf.new" <<CONF
ClusterName=scigate
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MSOCK
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$ETC/jwt_hs256.key
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$ETC/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
SchedulerType=sched/backfill
# A job the submit-time attempt could not start (node still completing the previous job, a busy
# host) otherwise waits for the next main pass, 60 s by default: longer than tests wait.
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
MinJobAge=$MIN_JOB_AGE
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
CONF_CHANGED=0
cmp -s "$ETC/slurm.conf.new" "$ETC/slurm.conf" || CONF_CHANGED=1
mv -f "$ETC/slurm.conf.new" "$ETC/slurm.conf"
chmod 644 "$ETC/slurm.conf" "$ETC/plugstack.conf"
export SLURM_CONF=$ETC/slurm.conf
if (( CONF_CHANGED )) && alive "$RUN/slurmctld.pid"; then scontrol reconfigure || true; fi

# --- slurmctld and slurmd (both daemonize and write their PID files) -----------------------
if ! alive "$RUN/slurmctld.pid"; then
  rm -f "$RUN/slurmctld.pid"
  slurmctld -f "$SLURM_CONF"
fi
wait_for slurmctld 20 scontrol ping
if ! alive "$RUN/slurmd.pid"; then
  rm -f "$RUN/slurmd.pid"
  slurmd -f "$SLURM_CONF"
fi
node_ready() { sinfo -h -N -o '%T' | grep -qE '^(idle|mixed|allocated)'; }
wait_for "node $HOST" 30 node_ready

# --- slurmrestd ---------------------------------------------------------------------------------
RSOCK=$RUN/rest/slurmrestd.sock
if (( WANT_REST )); then
  command -v slurmrestd >/dev/null || { echo "start.sh: slurmrestd not found" >&2; exit 2; }
  # (a) unix socket, rest_auth/local: the peer's uid (SO_PEERCRED) must be slurmrestd's own,
  #     or root, who may name the user with X-SLURM-USER-NAME. 22.05 binds the socket after
  #     dropping privileges (-u), so the socket's directory belongs to JOB_USER.
  mkdir -p "$RUN/rest"; chown "$JOB_USER" "$RUN/rest"; chmod 755 "$RUN/rest"
  if ! alive "$RUN/slurmrestd-local.pid"; then
    rm -f "$RSOCK"
    # Only the openapi/v0.0.38 plugin: dbv0.0.38 is fatal without slurmdbd.
    nohup env SLURM_CONF="$SLURM_CONF" \
      slurmrestd -f "$SLURM_CONF" -u "$JOB_USER" -a rest_auth/local -s openapi/v0.0.38 \
      "unix:$RSOCK" >"$LOG/slurmrestd-local.log" 2>&1 &
    echo $! > "$RUN/slurmrestd-local.pid"
  fi
  wait_for "slurmrestd on $RSOCK" 15 test -S "$RSOCK"
  # (b) TCP on the loopback, rest_auth/jwt: clients send X-SLURM-USER-NAME/-TOKEN.
  if ! alive "$RUN/slurmrestd-jwt.pid"; then
    nohup env SLURM_JWT=daemon SLURM_CONF="$SLURM_CONF" \
      slurmrestd -f "$SLURM_CONF" -u "$REST_USER" -a rest_auth/jwt -s openapi/v0.0.38 \
      "127.0.0.1:$REST_PORT" >"$LOG/slurmrestd-jwt.log" 2>&1 &
    echo $! > "$RUN/slurmrestd-jwt.pid"
  fi
  # Ready when it answers HTTP, not merely when the port accepts: a port taken meanwhile by
  # another daemon (clusters of parallel tests pick free ports at once) accepts the connection
  # and resets it at the first request.
  wait_for "slurmrestd answering HTTP on 127.0.0.1:$REST_PORT" 15 bash -c \
    'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
     printf "GET /openapi/v3 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" >&3
     IFS= read -r -t 2 line <&3 && [[ $line == HTTP/1.[01]\ * ]]' "$REST_PORT"
fi

echo "SLURM_CONF=$SLURM_CONF"
echo "SLURM_STATE=$STATE"
echo "SLURM_JOB_USER=$JOB_USER"
if (( WANT_REST )); then
  echo "SLURM_REST_SOCKET=$RSOCK"
  echo "SLURM_REST_URL=http://127.0.0.1:$REST_PORT"
fi
