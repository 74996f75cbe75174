#!/usr/bin/env bash
# start-slurm.sh - a one-node Slurm cluster on this machine for the Slurm tests (as root):
# Debian's slurm-wlm, munged, slurmctld and slurmd with proctrack/linuxproc (no cgroups).
# The config is written to /etc/slurm/slurm.conf only if there is none, or if it is ours.
# Idempotent; prints "slurm: ready in N s". `--stop` stops the daemons it started.
set -Eeuo pipefail
log() { printf 'slurm: %s\n' "$*" >&2; }
running() { pgrep -x -r D,R,S "$1" >/dev/null; }  # not a zombie
t0=$(date +%s)
CONF=/etc/slurm/slurm.conf
MARK="# written by remote's scripts/start-slurm.sh"
[ "$(id -u)" -eq 0 ] || { log "needs root"; exit 1; }

if [ "${1:-}" = "--stop" ]; then
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null; then
  log "installing slurm-wlm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >/dev/null
fi
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  log "$CONF exists and is not ours: leaving it (and its cluster) alone"
  exit 1
fi
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >"$CONF" <<CONFEOF
$MARK
ClusterName=remote
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
# tasks share cores (FORCE:4): an 8-task array runs at once on a small CI machine
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONFEOF

if ! running munged; then
  [ -s /etc/munge/munge.key ] || { mungekey -c -f >/dev/null 2>&1 || create-munge-key -f; }
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
fi
running slurmctld || slurmctld
running slurmd || slurmd
for _ in $(seq 300); do
  if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    log "ready in $(( $(date +%s) - t0 )) s"
    exit 0
  fi
  sleep 0.2
done
log "the node did not become idle; see /var/log/slurm/"
sinfo -N -l >&2 || true
exit 1
