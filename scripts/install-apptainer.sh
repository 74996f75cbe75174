#!/usr/bin/env bash
# install-apptainer.sh - install Apptainer (plus debootstrap) on Debian 12 amd64, as root.
#
# Apptainer is packaged only in Debian unstable, built against glibc >= 2.38
# (bookworm has 2.36). So, without touching the system's glibc or apt sources:
#   1. a private, temporary apt state (own sources list/lists/cache under mktemp,
#      mirror read from the machine's apt config) downloads unstable's apptainer
#      and libc6 .debs;
#   2. that glibc goes to $GLIBC_DIR; patchelf points the interpreter and
#      DT_RPATH of apptainer/starter there (RPATH, not RUNPATH: apptainer
#      re-executes itself with LD_LIBRARY_PATH set, RPATH wins over it);
#   3. the .deb is repackaged (libc6 dependency relaxed, version suffix) and
#      installed with apt-get, so its other dependencies come from bookworm;
#   4. the config is adapted to this kind of VM (see configure_apptainer).
# Idempotent: when the repackaged apptainer is installed and runs, only the
# helpers and the config are checked. FORCE=1 reinstalls.
# Uninstall: apt-get purge apptainer && rm -rf /usr/lib/apptainer-glibc
#
# Environment:
#   FORCE=1            rebuild and reinstall even if installed       (default 0)
#   APPTAINER_SUITE    suite to take apptainer from                  (default unstable)
#   LIBC_SUITE         suite to take the private libc6 from          (default same)
#   APPTAINER_VERSION  exact apptainer version                       (default newest)
#   DEB_CACHE          dir to keep/reuse downloaded .debs            (default none)
#   ROOT_CAPS_FIX=0    keep "root default capabilities" as is        (default auto)
#   CGROUPFS_FIX=0     keep "systemd cgroups" as is                  (default auto)
#   NONROOT_FUSE=0     leave /dev/fuse permissions alone             (default 1)
set -Eeuo pipefail

APPTAINER_SUITE=${APPTAINER_SUITE:-unstable}
LIBC_SUITE=${LIBC_SUITE:-$APPTAINER_SUITE}
APPTAINER_VERSION=${APPTAINER_VERSION:-}
DEB_CACHE=${DEB_CACHE:-}
FORCE=${FORCE:-0}
ROOT_CAPS_FIX=${ROOT_CAPS_FIX:-auto}
CGROUPFS_FIX=${CGROUPFS_FIX:-auto}
NONROOT_FUSE=${NONROOT_FUSE:-1}

GLIBC_DIR=/usr/lib/apptainer-glibc
LOCAL_SUFFIX="+privglibc1"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
CONF=/etc/apptainer/apptainer.conf
# runtime helpers from bookworm, and debootstrap for "Bootstrap: debootstrap" recipes
HELPERS=(squashfs-tools squashfuse fuse2fs fuse-overlayfs fuse3 uidmap e2fsprogs
         ca-certificates libcap2-bin debootstrap)

log() { printf 'install-apptainer: %s\n' "$*" >&2; }
die() { printf 'install-apptainer: ERROR: %s\n' "$*" >&2; exit 1; }
on_err() { printf 'install-apptainer: ERROR: exit %s at line %s: %s\n' "$1" "$2" "$3" >&2; }
trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR

export DEBIAN_FRONTEND=noninteractive
T0=$(date +%s)
WORK=$(mktemp -d -t install-apptainer.XXXXXX)   # logs, private apt state, .debs
trap 'rm -rf "$WORK"' EXIT
APTLOG=$WORK/apt.log

# ------------------------------------------------------------------ checks
[ "$(id -u)" -eq 0 ] || die "must run as root"
# shellcheck disable=SC1091
. /etc/os-release
if [ "${ID:-}" != debian ] || [ "${VERSION_CODENAME:-}" != bookworm ]; then
  die "this script targets Debian 12 (bookworm); found ${PRETTY_NAME:-unknown}"
fi
ARCH=$(dpkg --print-architecture)
[ "$ARCH" = amd64 ] || die "only amd64 is supported (found $ARCH)"
MULTIARCH=x86_64-linux-gnu
LDSO=ld-linux-x86-64.so.2

apt_install() {
  apt-get install -y --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >"$APTLOG" 2>&1 \
    || { tail -n 30 "$APTLOG" >&2; die "apt-get install $* failed"; }
}

installed_ok() {
  local v
  v=$(dpkg-query -W -f='${db:Status-Status} ${Version}' apptainer 2>/dev/null) || return 1
  [[ "$v" == "installed "*"$LOCAL_SUFFIX" ]] || return 1
  apptainer --version >/dev/null 2>&1
}

# Idempotent config fixes:
#  - capability bounding set incomplete (this VM lacks CAP_SYS_RESOURCE): with
#    "root default capabilities = full" every root exec fails; use "file" and
#    grant root exactly the bounding set. (%post builds still need
#    APPTAINER_DROP_CAPS, see build-image.sh.)
#  - PID 1 not systemd: --cpus/--memory need the cgroupfs manager.
#  - non-root SIF mounts use squashfuse, which needs /dev/fuse 0666 (lost on reboot).
configure_apptainer() {
  [ -f "$CONF" ] || die "$CONF missing"
  if [ "$ROOT_CAPS_FIX" != 0 ]; then
    local bnd last all have
    bnd=$((16#$(awk '/^CapBnd:/{print $2}' /proc/self/status)))
    last=$(cat /proc/sys/kernel/cap_last_cap)
    all=$(( (1 << (last + 1)) - 1 ))
    if (( (bnd & all) != all )); then
      have=$(capsh --decode="$(printf '%x' "$bnd")" | cut -d= -f2)
      [ -n "$have" ] || die "could not decode the capability bounding set"
      log "capability bounding set is incomplete: root default capabilities = file"
      apptainer capability add --user root "$have" >/dev/null 2>&1 \
        || die "apptainer capability add --user root failed"
      sed -i -E 's/^root default capabilities = .*/root default capabilities = file/' "$CONF"
    fi
  fi
  if [ "$CGROUPFS_FIX" != 0 ] && [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
    log "PID 1 is not systemd: systemd cgroups = no"
    sed -i -E 's/^systemd cgroups = .*/systemd cgroups = no/' "$CONF"
  fi
  if [ "$NONROOT_FUSE" = 1 ] && [ -c /dev/fuse ]; then
    chmod 0666 /dev/fuse
  fi
}

log "apt-get update (system sources)"
apt-get update >"$APTLOG" 2>&1 || { tail -n 30 "$APTLOG" >&2; die "apt-get update failed"; }

if [ "$FORCE" != 1 ] && installed_ok; then
  log "apptainer $(dpkg-query -W -f='${Version}' apptainer) already installed; checking helpers and config"
  apt_install "${HELPERS[@]}"
  configure_apptainer
  log "done in $(( $(date +%s) - T0 ))s"
  apptainer --version
  exit 0
fi

log "installing patchelf and the helpers from bookworm"
apt_install patchelf "${HELPERS[@]}"

# ------------------------------------------------- mirror from apt config
# shellcheck disable=SC2016  # $(REPO_URI) is apt's format, not the shell's
MIRROR=$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 'Label: Debian' \
           'Identifier: Packages' 2>/dev/null | awk 'NR==1' || true)
if [ -z "$MIRROR" ]; then   # fallback: parse the sources files (deb822, then one-line)
  MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
      /^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ && !m {m=u} END {print m}' || true)
  [ -n "$MIRROR" ] || MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1=="deb" && $0 ~ / bookworm / && !m {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\// && !m) m=$i} END {print m}' || true)
fi
[ -n "$MIRROR" ] || die "could not find the bookworm Debian mirror in the apt sources"
MIRROR=${MIRROR%/}
log "mirror: $MIRROR; apptainer from $APPTAINER_SUITE, libc6 from $LIBC_SUITE"

# ------------------------------------ private apt state, download the .debs
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/debs"
{
  echo "deb [signed-by=$KEYRING] $MIRROR $APPTAINER_SUITE main"
  [ "$LIBC_SUITE" = "$APPTAINER_SUITE" ] || echo "deb [signed-by=$KEYRING] $MIRROR $LIBC_SUITE main"
} >"$WORK/apt/sources.list"
APTX=(-o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o "Dir::Etc::SourceParts=$WORK/apt/none"
      -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache"
      -o "APT::Sandbox::User=root" -o "Acquire::Languages=none")
apt-get "${APTX[@]}" update >"$WORK/update.log" 2>&1 \
  || { tail -n 20 "$WORK/update.log" >&2; die "apt-get update of the private $APPTAINER_SUITE source failed"; }

# (awk without early exit: with pipefail, apt-cache would die of SIGPIPE)
first_version() { apt-cache "${APTX[@]}" show "$1" 2>/dev/null | awk '/^Version:/ && !v {v=$2} END {print v}'; }
APP_VER=${APPTAINER_VERSION:-$(first_version "apptainer/$APPTAINER_SUITE")}
LIBC_VER=$(first_version "libc6/$LIBC_SUITE")
[ -n "$APP_VER" ] || die "apptainer not found in $APPTAINER_SUITE on $MIRROR"
[ -n "$LIBC_VER" ] || die "libc6 not found in $LIBC_SUITE on $MIRROR"
log "apptainer $APP_VER, private glibc from libc6 $LIBC_VER"

fetch_deb() { # NAME VERSION
  local f="${1}_${2//:/%3a}_${ARCH}.deb"
  if [ -n "$DEB_CACHE" ] && [ -s "$DEB_CACHE/$f" ]; then cp "$DEB_CACHE/$f" "$WORK/debs/"; return; fi
  (cd "$WORK/debs" && apt-get "${APTX[@]}" download "$1=$2" >"$WORK/download.log" 2>&1) \
    || { tail -n 20 "$WORK/download.log" >&2; die "download of $1 $2 failed"; }
  if [ -n "$DEB_CACHE" ]; then mkdir -p "$DEB_CACHE"; cp "$WORK/debs/$f" "$DEB_CACHE/"; fi
}
fetch_deb apptainer "$APP_VER"
fetch_deb libc6 "$LIBC_VER"
APP_DEB=$(ls "$WORK"/debs/apptainer_*.deb)
LIBC_DEB=$(ls "$WORK"/debs/libc6_*.deb)

# -------------------------------------------------------------- repackage
PKG=$WORK/pkg
dpkg-deb -R "$APP_DEB" "$PKG"
dpkg-deb -x "$LIBC_DEB" "$WORK/libc"
SRC_LIB=$WORK/libc/usr/lib/$MULTIARCH
[ -e "$SRC_LIB/$LDSO" ] || SRC_LIB=$WORK/libc/lib/$MULTIARCH
{ [ -e "$SRC_LIB/$LDSO" ] && [ -e "$SRC_LIB/libc.so.6" ]; } || die "unexpected layout of the libc6 .deb"
mkdir -p "$PKG$GLIBC_DIR"
# the glibc runtime libraries (libc, libm, libresolv, libnss_*, ...)
find "$SRC_LIB" -maxdepth 1 \( -type f -o -type l \) -name '*.so*' -exec cp -a {} "$PKG$GLIBC_DIR/" \;
echo "libc6 $LIBC_VER from Debian $LIBC_SUITE (private copy used only by apptainer)" >"$PKG$GLIBC_DIR/README"

patched=0
while IFS= read -r -d '' f; do
  hdr=$(readelf -l "$f" 2>/dev/null || true)   # not piped into grep -q: SIGPIPE + pipefail
  if [[ "$hdr" == *"program interpreter"* ]]; then
    patchelf --set-interpreter "$GLIBC_DIR/$LDSO" --set-rpath "$GLIBC_DIR" --force-rpath "$f"
    log "patched ${f#"$PKG"}"
    patched=$((patched + 1))
  fi
done < <(find "$PKG/usr" -path "$PKG$GLIBC_DIR" -prune -o -type f -perm -u+x -print0)
[ "$patched" -ge 2 ] || die "expected to patch at least apptainer and starter, patched $patched"

NEW_VER="${APP_VER}${LOCAL_SUFFIX}"
sed -i -E -e "s/^Version: .*/Version: $NEW_VER/" -e '/^Depends:/ s/libc6 \([^)]*\)/libc6/' \
  "$PKG/DEBIAN/control"
(cd "$PKG" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
OUT_DEB="$WORK/apptainer_${NEW_VER}_${ARCH}.deb"
# uncompressed: xz took ~30 s of the install on 2 cores
dpkg-deb --root-owner-group -Znone -b "$PKG" "$OUT_DEB" >/dev/null
if [ -n "$DEB_CACHE" ]; then cp "$OUT_DEB" "$DEB_CACHE/"; fi

# ---------------------------------------------------------------- install
log "installing $(basename "$OUT_DEB")"
apt_install --reinstall "$OUT_DEB"
apt-mark auto patchelf >/dev/null 2>&1 || true
configure_apptainer

command -v apptainer >/dev/null || die "apptainer not on PATH after install"
VER_OUT=$(apptainer --version 2>&1) || die "apptainer does not run: $VER_OUT"
log "done in $(( $(date +%s) - T0 ))s"
echo "$VER_OUT"
