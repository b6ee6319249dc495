#!/usr/bin/env bash
# Prometheus and promtool from Debian's `prometheus` package (2.42 in bookworm), taken out of the
# .deb rather than installed: installing would pull ~15 web-asset packages and start a service.
# Both binaries need only libc. Used by the Prometheus image (build-images.sh) and by the rules'
# unit tests (`make test` runs `promtool test rules`).
# Usage: fetch-prometheus.sh [DEST]   (default docker/prometheus/bin; a no-op when both are there)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEST=$(mkdir -p "${1:-$HERE/prometheus/bin}" && cd "${1:-$HERE/prometheus/bin}" && pwd)
[[ -x "$DEST/prometheus" && -x "$DEST/promtool" ]] && exit 0

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# A fresh machine may have no package lists yet: update once, then try again.
if ! apt-get download prometheus >/dev/null 2>&1; then
  apt-get update -q >/dev/null
  apt-get download prometheus >/dev/null 2>&1 || { echo "fetch-prometheus: apt-get download prometheus failed" >&2; exit 1; }
fi
dpkg-deb -x prometheus_*.deb root
install -m 0755 root/usr/bin/prometheus root/usr/bin/promtool "$DEST/"
echo "fetch-prometheus: $("$DEST/promtool" --version 2>&1 | head -1) in $DEST" >&2
