#!/usr/bin/env bash
# render-architecture.sh - render docs/architecture.dot to architecture.png (repository root).
#
# Usage: scripts/render-architecture.sh [OUT.png]
#
# Needs Graphviz's `dot` (Debian: apt-get install -y graphviz).
#
# Environment:
#   DPI   resolution of the PNG                      (default: 110)
set -Eeuo pipefail

root="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/docs/architecture.dot"
out="${1:-$root/architecture.png}"
dpi="${DPI:-110}"

if ! command -v dot >/dev/null 2>&1; then
    echo "render-architecture.sh: Graphviz 'dot' is not on PATH;" \
        "install it (Debian: apt-get install -y graphviz)" >&2
    exit 127
fi
if [[ ! -f "$src" ]]; then
    echo "render-architecture.sh: no $src" >&2
    exit 1
fi

# render to a temp file beside the output, so a failed run never leaves a half-written PNG
tmp="$(mktemp "${out%.png}.XXXXXX.png")"
trap 'rm -f "$tmp"' EXIT
dot -Tpng "-Gdpi=$dpi" -o "$tmp" "$src"
chmod 644 "$tmp"  # mktemp makes it 0600
mv -f "$tmp" "$out"
trap - EXIT
echo "wrote $out"
