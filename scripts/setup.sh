#!/usr/bin/env bash
# setup.sh - everything remote needs on a fresh Debian 12 machine, idempotent:
#   1. Apptainer (scripts/install-apptainer.sh; needs root),
#   2. a virtual environment .venv with remote, its dev tools, the cluster extra (ray,
#      submitit: ~80 MB, ~10 s) and the video extra (imageio, imageio-ffmpeg: a static
#      ffmpeg of ~170 MB) (pip install -e .[dev,cluster,video]),
#   3. the test images in .images/ (scripts/build-test-images.sh; needs root), and the
#      compiled msgpack for their Pythons that are not .venv's (remote codecs pull, ~6 s once),
#   4. for the process runtime, two venvs with conflicting numpy versions: .venvs/envA
#      (numpy 1.x) and .venvs/envB (numpy 2.x), each with gymnasium 1.x,
#   5. Podman and Docker (a dockerd is started if none runs) and the OCI test image
#      remote-test:latest in each, for the podman and docker runtimes
#      (scripts/install-podman.sh, install-docker.sh, build-oci-image.sh; as root, ~45 s),
#   6. a one-node Slurm cluster for the Slurm tests (scripts/start-slurm.sh: Debian's
#      slurm-wlm, munged, slurmctld, slurmd; as root, ~15 s to install, ~1 s to start).
# Reruns take seconds. Environment: PYTHON (default python3) creates the venvs.
#
# setup.sh --example: only what examples/cartpole.py needs: Apptainer, .venv with remote
# alone (no dev tools, torch or Ray) and .images/gymnasium.sif; nothing else (~1 minute on a
# fresh machine). The README's first command.
set -Eeuo pipefail
EXAMPLE=0
case "${1:-}" in
  --example) EXAMPLE=1;;
  "") ;;
  *) echo "usage: $0 [--example]" >&2; exit 2;;
esac
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
if [ "$EXAMPLE" = 1 ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
  if [ "$(id -u)" -eq 0 ] && [ ! -s .images/gymnasium.sif ]; then
    log "the example's image"
    bash scripts/build-image.sh recipes/gymnasium.def .images/gymnasium.sif
  fi
  [ -s .images/gymnasium.sif ] || { log "building images needs root (scripts/build-image.sh)"; exit 1; }
  log "done in $(( $(date +%s) - t0 )) s"
  exit 0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,cluster,video]"
# Stable-Baselines3 on CPU torch for the PPO test; torch pinned to the CPU build this machine
# kind keeps on disk (an unpinned torch would pull a CUDA build of several GB)
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}" "stable-baselines3>=2.3" \
  "opencv-python-headless>=4.6"  # cv2 for SB3's AtariWrapper on the host

# compiled msgpack for images whose Python is not this one (python313.sif): once, into the cache
log "compiled msgpack for other Pythons (remote codecs pull)"
.venv/bin/remote codecs pull >/dev/null || log "remote codecs pull failed: such images run msgpack's fallback"

if [ "$(id -u)" -eq 0 ]; then
  log "test images"
  bash scripts/build-test-images.sh
else
  [ -s .images/gymnasium.sif ] || { log "building images needs root (scripts/build-test-images.sh)"; exit 1; }
fi

# test_venv NAME REQUIREMENT...: a venv without pip of its own, filled by .venv's pip
# (pip --python), so it uses the same pip settings; skipped when it already imports.
test_venv() {
  local dir=.venvs/$1; shift
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import numpy, gymnasium" 2>/dev/null; then return; fi
  log "creating $dir ($*)"
  "${PYTHON:-python3}" -m venv --clear --without-pip "$dir"
  .venv/bin/python -m pip --python "$dir/bin/python" install -q --disable-pip-version-check "$@"
}
test_venv envA "numpy<2" "gymnasium>=1"
test_venv envB "numpy>=2" "gymnasium>=1"

if [ "$(id -u)" -eq 0 ]; then
  log "Podman, Docker and the OCI test image"
  bash scripts/install-podman.sh
  bash scripts/install-docker.sh
  bash scripts/build-oci-image.sh
  ENGINE=docker bash scripts/build-oci-image.sh
  log "Slurm (one node)"
  bash scripts/start-slurm.sh
fi
log "done in $(( $(date +%s) - t0 )) s"
