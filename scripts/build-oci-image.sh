#!/usr/bin/env bash
# build-oci-image.sh - the test image for the podman/docker runtimes, made here (there is no
# outside registry): the root file system of an Apptainer test image, imported as an OCI image.
#
# Usage: scripts/build-oci-image.sh [SIF] [NAME]
#   SIF   default REPO/.images/gymnasium.sif (Debian 12 + python3 numpy gymnasium Pyro5 msgpack)
#   NAME  default remote-test:latest
# Environment: ENGINE (default podman; docker works too), FORCE=1 to rebuild.
# Skipped when NAME exists and was imported from the same SIF (size and mtime). ~10 s.
set -Eeuo pipefail
REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
SIF=$(readlink -f "${1:-$REPO/.images/gymnasium.sif}")
NAME=${2:-remote-test:latest}
ENGINE=${ENGINE:-podman}
log() { printf 'build-oci-image: %s\n' "$*" >&2; }

[ -s "$SIF" ] || { log "no $SIF (scripts/build-test-images.sh builds it)"; exit 1; }
source_id=$(stat -c '%s-%Y' "$SIF")
current=$("$ENGINE" image inspect --format '{{index .Config.Labels "remote.source"}}' "$NAME" 2>/dev/null || true)
if [ "${FORCE:-0}" != 1 ] && [ "$current" = "$source_id" ]; then
  log "$NAME is up to date"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
apptainer build --force --sandbox "$work/rootfs" "$SIF" >/dev/null 2>&1
tar -C "$work/rootfs" -c . | "$ENGINE" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL remote.source=$source_id" \
  --change 'CMD ["python3"]' - "$NAME" >/dev/null
log "$NAME imported from $SIF"
