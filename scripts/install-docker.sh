#!/usr/bin/env bash
# install-docker.sh - Docker from Debian 12 (docker.io) for remote's docker runtime, as root,
# idempotent; starts dockerd if no daemon answers.
#
# PID 1 here is not systemd, so nothing starts the daemon: this script starts dockerd in the
# background (log: /var/log/remote-dockerd.log) with what remote needs only: no iptables
# rules and no docker0 bridge (remote's containers use the host network), so the machine's
# network is left as it is. The package's own service start is suppressed during the install
# (a temporary policy-rc.d, only if the machine has none).
set -Eeuo pipefail
log() { printf 'install-docker: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }

if ! command -v dockerd >/dev/null; then
  log "apt-get install docker.io"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >/dev/null
fi

if ! docker version >/dev/null 2>&1; then
  log "starting dockerd (no iptables, no bridge)"
  setsid dockerd --iptables=false --ip6tables=false --bridge=none \
    </dev/null >>/var/log/remote-dockerd.log 2>&1 &
  for _ in $(seq 100); do
    docker version >/dev/null 2>&1 && break
    sleep 0.2
  done
  docker version >/dev/null 2>&1 || { log "dockerd did not start: see /var/log/remote-dockerd.log"; exit 1; }
fi
docker version --format 'docker client {{.Client.Version}}, daemon {{.Server.Version}}' >&2
