#!/usr/bin/env bash
# build-test-images.sh - build the test images used by the tests, as root:
#   OUTDIR/gymnasium.sif  from recipes/gymnasium.def (Debian 12 + numpy gymnasium Pyro5
#                         msgpack + this project's package)
#   OUTDIR/minimal.sif    from recipes/minimal.def (gymnasium.sif without Pyro5,
#                         serpent, msgpack, remote)
#   OUTDIR/legacy.sif     from recipes/legacy.def (numpy 1.26 + gymnasium 0.29.1: the
#                         stack that cannot coexist with gymnasium.sif's; ~60 s)
#   OUTDIR/python313.sif  from recipes/python313.def (Debian 13, Python 3.13: not the host's
#                         Python; numpy + gymnasium only; ~60 s, 86 MB)
#   OUTDIR/envs.sif       from recipes/envs.def (the field's real envs: ale-py, minigrid,
#                         Box2D, MuJoCo; no remote in it; ~70 s)
#   OUTDIR/dacbench.sif   from recipes/dacbench.def (DACBench with its dependencies; no
#                         remote in it; ~140 s)
# An image is skipped when it exists and is newer than its recipe (and, for
# minimal.sif, than gymnasium.sif), so local reruns are fast. A change under remote/
# does not call for a rebuild: the host brings its own remote/ into the container
# at start, ahead of the copy installed in the image.
#
# Usage: scripts/build-test-images.sh [OUTDIR]      (default: REPO/.images)
#
# Environment:
#   FORCE=1   rebuild every image
#   plus those of scripts/build-image.sh (MIRROR, COMPRESSION, NOTEST, VERBOSE)
set -Eeuo pipefail

REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
OUTDIR=$(readlink -m "${1:-$REPO/.images}")
FORCE=${FORCE:-0}
BUILD="$REPO/scripts/build-image.sh"

log() { printf 'build-test-images: %s\n' "$*" >&2; }

# up_to_date IMAGE INPUT...: IMAGE exists and no input file (or file under an
# input directory, __pycache__ and *.pyc ignored) is newer than it. Only files
# count (running the tests creates remote/__pycache__, which touches remote/), so
# a deleted module alone does not trigger a rebuild: use FORCE=1 then.
up_to_date() {
  local img=$1; shift
  [ "$FORCE" != 1 ] && [ -s "$img" ] || return 1
  local newer
  newer=$(find "$@" -name __pycache__ -prune -o -type f ! -name '*.pyc' -newer "$img" -print 2>/dev/null \
          | head -n 1)
  [ -z "$newer" ] || { log "$(basename "$img") is older than ${newer#"$REPO"/}"; return 1; }
}

mkdir -p "$OUTDIR"
GYM=$OUTDIR/gymnasium.sif
MIN=$OUTDIR/minimal.sif
LEGACY=$OUTDIR/legacy.sif
if up_to_date "$GYM" "$REPO/recipes/gymnasium.def"; then
  log "$GYM is up to date"
else
  "$BUILD" "$REPO/recipes/gymnasium.def" "$GYM"
fi

if up_to_date "$MIN" "$REPO/recipes/minimal.def" "$GYM"; then
  log "$MIN is up to date"
else
  "$BUILD" "$REPO/recipes/minimal.def" "$MIN" --arg "BASE=$GYM"
fi

if up_to_date "$LEGACY" "$REPO/recipes/legacy.def"; then
  log "$LEGACY is up to date"
else
  "$BUILD" "$REPO/recipes/legacy.def" "$LEGACY"
fi

for name in python313 envs dacbench; do
  if up_to_date "$OUTDIR/$name.sif" "$REPO/recipes/$name.def"; then
    log "$OUTDIR/$name.sif is up to date"
  else
    "$BUILD" "$REPO/recipes/$name.def" "$OUTDIR/$name.sif"
  fi
done
