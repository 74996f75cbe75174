#!/usr/bin/env bash
# setup.sh - everything remote needs on a fresh Debian 12 machine, idempotent:
#   1. Apptainer (scripts/install-apptainer.sh; needs root),
#   2. a virtual environment .venv with remote and its dev tools (pip install -e .[dev]),
#   3. the test images in .images/ (scripts/build-test-images.sh; needs root).
# Reruns take seconds. Environment: PYTHON (default python3) creates the venv.
set -Eeuo pipefail
REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
cd "$REPO"
log() { printf 'setup: %s\n' "$*" >&2; }
t0=$(date +%s)

if [ "$(id -u)" -eq 0 ]; then
  log "Apptainer"
  bash scripts/install-apptainer.sh >/dev/null
elif ! command -v apptainer >/dev/null; then
  log "Apptainer is missing and this is not root: ask an admin to run scripts/install-apptainer.sh"
  exit 1
fi
apptainer --version >&2

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "${PYTHON:-python3}" -m venv .venv
fi
log "installing remote into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"

if [ "$(id -u)" -eq 0 ]; then
  log "test images"
  bash scripts/build-test-images.sh
else
  [ -s .images/gymnasium.sif ] || { log "building images needs root (scripts/build-test-images.sh)"; exit 1; }
fi
log "done in $(( $(date +%s) - t0 )) s"
