#!/usr/bin/env bash
# install-podman.sh - Podman from Debian 12 for remote's podman runtime, as root, idempotent.
#
# Installs podman and runc from Debian's archive. If /etc/containers/containers.conf does not
# exist yet, writes one with what this VM kind needs before a container can start (see
# docs/runtimes.md):
#   - runtime "runc": crun 1.8 (bookworm) refuses the hybrid cgroup layout (v1 controllers
#     plus an empty v2 hierarchy): "cgroups in hybrid mode not supported".
#   - default_ulimits at the current hard limits: for root podman raises RLIMIT_NOFILE and
#     RLIMIT_NPROC to 1048576, which fails without CAP_SYS_RESOURCE ("setrlimit: Operation
#     not permitted"); nproc is capped at kernel.pid_max, the limit conmon itself runs with.
# An existing containers.conf is left alone.
set -Eeuo pipefail
log() { printf 'install-podman: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }

if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  log "apt-get install podman runc"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc >/dev/null
fi

CONF=/etc/containers/containers.conf
if [ ! -e "$CONF" ]; then
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  pid_max=$(cat /proc/sys/kernel/pid_max)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
  log "writing $CONF (runc, nofile=$nofile, nproc=$nproc)"
  cat >"$CONF" <<CONF
# written by remote's scripts/install-podman.sh for a root without CAP_SYS_RESOURCE on a
# hybrid cgroup layout; see docs/runtimes.md in the remote repository
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
CONF
fi
podman --version >&2
