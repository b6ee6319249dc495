#!/usr/bin/env bash
# Everything needed before `docker-compose -f docker/compose.yaml up`, offline:
# docker engine, the local base images, the wheelhouse, the leasenet image and the
# deployment's certificates (docker/certs/, made by make-certs.sh with that image).
# Usage: build-images.sh [--force] [PROJECT_DIR]   (--force also rebuilds the base images)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FORCE=()
[[ "${1:-}" == "--force" ]] && { FORCE=(--force); shift; }

SRC=$(cd "${1:-$HERE/..}" && pwd)
IMAGE=${LEASENET_IMAGE:-leasenet:latest}

"$HERE/install-docker.sh"
"$HERE/build-base.sh" "${FORCE[@]}"

# What the image is made of: the base image and every file of the project that git tracks or
# would track (tests and docs aside), as they are in the work tree. Without git: always rebuild.
source_id() {
  git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "no-git-$RANDOM$RANDOM"; return; }
  { docker image inspect -f '{{.Id}}' leasenet-base:bookworm
    cat "$HERE/Dockerfile"
    cd "$SRC" && git ls-files -co --exclude-standard -z -- . ':!tests' ':!*.md' | xargs -0 sha256sum 2>&1
  } | sha256sum | cut -c1-16
}
ID=$(source_id)
if [[ "$(docker image inspect -f '{{index .Config.Labels "io.leasenet.source"}}' "$IMAGE" 2>/dev/null)" == "$ID" ]]; then
  # A new wheelhouse always changes the image's layers, so an unchanged tree skips both (~1 min).
  echo "build-images: $IMAGE is up to date with $SRC" >&2
else
  "$HERE/build-wheelhouse.sh" "$SRC"
  docker build -q --build-arg BASE_IMAGE=leasenet-base:bookworm --label "io.leasenet.source=$ID" \
    -t "$IMAGE" "$HERE" 2> >(grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e '^ *$' >&2) >/dev/null
  echo "build-images: built $IMAGE" >&2
fi
# Prometheus (docker/prometheus): Debian's binary on the same base, with the config and rules.
PROM_IMAGE=${LEASENET_PROMETHEUS_IMAGE:-leasenet-prometheus:2.42}
"$HERE/fetch-prometheus.sh"
PROM_ID=$( { docker image inspect -f '{{.Id}}' leasenet-base:bookworm; cat "$HERE"/prometheus/{Dockerfile,prometheus.yml,rules.yml}; } | sha256sum | cut -c1-16)
if [[ "$(docker image inspect -f '{{index .Config.Labels "io.leasenet.source"}}' "$PROM_IMAGE" 2>/dev/null)" != "$PROM_ID" ]]; then
  docker build -q --build-arg BASE_IMAGE=leasenet-base:bookworm --label "io.leasenet.source=$PROM_ID" \
    -t "$PROM_IMAGE" "$HERE/prometheus" 2> >(grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e '^ *$' >&2) >/dev/null
  echo "build-images: built $PROM_IMAGE" >&2
fi
"$HERE/make-certs.sh"
# Drop superseded/intermediate images of ours (dangling + our label), nobody else's.
docker image prune -f --filter label=io.leasenet.image=1 >/dev/null
