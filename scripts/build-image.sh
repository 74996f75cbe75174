#!/usr/bin/env bash
# build-image.sh - build one Apptainer recipe of this project, as root, on Debian 12
# (after scripts/install-apptainer.sh).
#
# Usage: scripts/build-image.sh RECIPE.def OUT.sif [--arg KEY=VALUE ...]
#
#   - runs `apptainer build -F` from the repository root, so the recipes' %files
#     paths (pyproject.toml, remote/, ...) are relative to it;
#   - passes --build-arg MIRROR=<this machine's Debian mirror> when the recipe uses
#     {{ MIRROR }}; the mirror is read from apt's config at run time;
#   - hands the host's pip settings (index, CA bundle, constraints, proxies) to the
#     build: copied into a temp dir bound read-only at /mnt, with /mnt/pip.env to
#     source in %post (PyPI traffic may be intercepted: without the host's CA bundle
#     pip fails with CERTIFICATE_VERIFY_FAILED);
#   - sets APPTAINER_DROP_CAPS to the capabilities missing from this machine's
#     bounding set (else %post fails as root);
#   - compresses the squashfs with lz4 (faster cold start than gzip, larger file);
#   - builds to a temp file beside OUT.sif and renames it on success.
# --arg values that name an existing file relative to the current directory are
# made absolute (e.g. --arg BASE=.images/gymnasium.sif).
#
# Environment:
#   MIRROR       Debian mirror URL for {{ MIRROR }}    (default: read from apt)
#   COMPRESSION  squashfs compressor: lz4, gzip, zstd, xz; "default" = apptainer's
#                                                      (default: lz4)
#   NOTEST=1     skip the recipe's %test section       (default: 0)
#   VERBOSE=1    show the build log as it runs         (default: only on failure)
#   APPTAINER_DROP_CAPS  used as given if set          (default: the missing caps)
#   APPTAINER_BIND       kept; the pip staging dir is appended to it
set -Eeuo pipefail

PROG=build-image
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "$PROG" "$*" >&2; exit 1; }
usage() { echo "usage: $0 RECIPE.def OUT.sif [--arg KEY=VALUE ...]" >&2; exit 2; }

[ $# -ge 2 ] || usage
RECIPE=$(readlink -f "$1") || die "recipe $1 not found"
[ -f "$RECIPE" ] || die "recipe $1 not found"
OUT=$(readlink -m "$2")
shift 2
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --arg) [ $# -ge 2 ] || usage; ARGS+=("$2"); shift 2;;
    --arg=*) ARGS+=("${1#--arg=}"); shift;;
    *) usage;;
  esac
done

REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
COMPRESSION=${COMPRESSION:-lz4}
NOTEST=${NOTEST:-0}
VERBOSE=${VERBOSE:-0}

[ "$(id -u)" -eq 0 ] || die "must run as root (Bootstrap: debootstrap builds need it)"
command -v apptainer >/dev/null || die "apptainer not installed (run scripts/install-apptainer.sh)"
if grep -Eiq '^[[:space:]]*Bootstrap:[[:space:]]*debootstrap' "$RECIPE"; then
  command -v debootstrap >/dev/null || die "debootstrap not installed (run scripts/install-apptainer.sh)"
fi

# temp dir for the log and the staged pip settings (they hold the index/mirror URLs)
TMP=$(mktemp -d -t build-image.XXXXXX)
OUTDIR=$(dirname "$OUT")
mkdir -p "$OUTDIR"
TMPOUT="$OUTDIR/.$(basename "$OUT").tmp.$$"
trap 'rm -rf "$TMP" "$TMPOUT"' EXIT
LOG=$TMP/build.log

# ------------------------------------------------------------ build args
BUILD_ARGS=()
has_arg() { local a; for a in ${ARGS[@]+"${ARGS[@]}"}; do [ "${a%%=*}" = "$1" ] && return 0; done; return 1; }
for a in ${ARGS[@]+"${ARGS[@]}"}; do
  [[ "$a" == *=* ]] || die "--arg needs KEY=VALUE, got '$a'"
  k=${a%%=*}; v=${a#*=}
  if [[ "$v" != /* ]] && [ -e "$v" ]; then v=$(readlink -f "$v"); fi
  BUILD_ARGS+=(--build-arg "$k=$v")
done

if grep -Eq '\{\{[[:space:]]*MIRROR[[:space:]]*\}\}' "$RECIPE" && ! has_arg MIRROR; then
  if [ -z "${MIRROR:-}" ]; then
    # shellcheck disable=SC2016  # $(REPO_URI) is apt's format, not the shell's
    MIRROR=$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 'Label: Debian' \
               'Identifier: Packages' 2>/dev/null | awk 'NR==1' || true)
  fi
  if [ -z "${MIRROR:-}" ]; then   # fallback: parse the sources files (deb822, then one-line)
    MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
        /^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ && !m {m=u} END {print m}' || true)
    [ -n "$MIRROR" ] || MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1=="deb" && $0 ~ / bookworm / && !m {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\// && !m) m=$i} END {print m}' || true)
  fi
  [ -n "${MIRROR:-}" ] || die "no bookworm Debian mirror in the apt sources (set MIRROR=URL)"
  MIRROR=${MIRROR%/}
  BUILD_ARGS+=(--build-arg "MIRROR=$MIRROR")
  log "Debian mirror (from apt): $MIRROR"
fi

# ---------------------------------------------------- host pip settings
# Effective settings (`pip config list` + PIP_* + proxy variables), one per line:
# NAME<TAB>VALUE. Files they name (CA bundle, constraints) are copied to $STAGE
# and the values rewritten to /mnt/...; directories (local indexes, find-links)
# are not passed.
STAGE=$TMP/mnt
mkdir -p "$STAGE"
chmod 755 "$TMP" "$STAGE"
python3 - >"$TMP/hostpip.tsv" 2>/dev/null <<'PYEOF' || : >"$TMP/hostpip.tsv"
import os, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                     capture_output=True, text=True).stdout
rank = {"global": 0, "install": 1, ":env:": 2}       # later wins, like pip
items = []
for line in out.splitlines():
    name, _, val = line.partition("=")
    sect, _, key = name.partition(".")
    val = val.strip()
    if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
        val = val[1:-1]
    if sect in rank:
        items.append((rank[sect], key, val))
env = {}
for _, key, val in sorted(items, key=lambda t: t[0]):
    env["PIP_" + key.upper().replace("-", "_")] = val
for k, v in os.environ.items():
    if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        env[k] = v
for k, v in sorted(env.items()):
    if "\n" not in v and "\t" not in v:
        print(f"{k}\t{v}")
PYEOF
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }   # quote for POSIX sh (%post runs /bin/sh)
: >"$STAGE/pip.env"
n=0
PASSED=()
while IFS=$'\t' read -r k v; do
  nv=""
  for tok in $v; do
    p=${tok#file://}
    if [[ "$p" == /* ]] && [ -f "$p" ]; then
      n=$((n + 1)); cp "$p" "$STAGE/f$n"; tok="${tok%"$p"}/mnt/f$n"
    elif [[ "$p" == /* ]]; then
      continue   # a directory or a local index: not available inside
    fi
    nv="${nv:+$nv }$tok"
  done
  [ -n "$nv" ] || continue
  printf 'export %s=%s\n' "$k" "$(sq "$nv")" >>"$STAGE/pip.env"
  PASSED+=("$k")
done <"$TMP/hostpip.tsv"
log "host pip settings passed to %post: ${PASSED[*]:-(none)}"

# ------------------------------------------------ capabilities, compression
missing_caps() {
  local bnd last all miss
  bnd=$((16#$(awk '/^CapBnd:/{print $2}' /proc/self/status)))
  last=$(cat /proc/sys/kernel/cap_last_cap)
  all=$(( (1 << (last + 1)) - 1 ))
  miss=$(( all & ~bnd ))
  (( miss == 0 )) || capsh --decode="$(printf '%x' "$miss")" | cut -d= -f2 | tr '[:lower:]' '[:upper:]'
}
if [ -z "${APPTAINER_DROP_CAPS:-}" ]; then
  DROP=$(missing_caps || true)
  if [ -n "$DROP" ]; then export APPTAINER_DROP_CAPS="$DROP"; fi
fi
[ -z "${APPTAINER_DROP_CAPS:-}" ] || log "APPTAINER_DROP_CAPS=$APPTAINER_DROP_CAPS"

# via APPTAINER_BIND: `build -B` works too but warns "destination is already in
# the mount point list"
export APPTAINER_BIND="${APPTAINER_BIND:+$APPTAINER_BIND,}$STAGE:/mnt:ro"
FLAGS=(-F)
case "$COMPRESSION" in
  ""|default) ;;
  *) FLAGS+=(--mksquashfs-args "-comp $COMPRESSION");;
esac
[ "$NOTEST" != 1 ] || FLAGS+=(--notest)

# ------------------------------------------------------------------ build
cd "$REPO"
log "apptainer build ${RECIPE#"$REPO"/} -> $OUT (from $REPO)"
T0=$(date +%s.%N)
rc=0
if [ "$VERBOSE" = 1 ]; then
  apptainer build "${FLAGS[@]}" ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} "$TMPOUT" "$RECIPE" 2>&1 | tee "$LOG" >&2 \
    || rc=$?
else
  apptainer build "${FLAGS[@]}" ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} "$TMPOUT" "$RECIPE" >"$LOG" 2>&1 \
    || rc=$?
fi
SECS=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
if [ "$rc" -ne 0 ] || [ ! -s "$TMPOUT" ]; then
  [ "$VERBOSE" = 1 ] || { echo "----- last 40 lines of the build log -----"; tail -n 40 "$LOG"; echo "-----"; } >&2
  die "apptainer build of $RECIPE failed (exit $rc) after ${SECS}s"
fi
mv -f "$TMPOUT" "$OUT"
echo "image:   $OUT"
echo "size:    $(stat -c %s "$OUT") bytes ($(du -h "$OUT" | cut -f1))"
echo "elapsed: ${SECS}s"
