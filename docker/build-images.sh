#!/usr/bin/env bash
# Everything needed before `docker-compose -f docker/compose.yaml up`, offline:
# docker engine, the local base images, the wheelhouse, the leasenet image and the
# deployment's certificates (docker/certs/, made by make-certs.sh with that image).
# Usage: build-images.sh [--force] [PROJECT_DIR]   (--force also rebuilds the base images)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FORCE=()
[[ "${1:-}" == "--force" ]] && { FORCE=(--force); shift; }

"$HERE/install-docker.sh"
"$HERE/build-base.sh" "${FORCE[@]}"
"$HERE/build-wheelhouse.sh" "${1:-$HERE/..}"
# The layer cache makes an unchanged rebuild cheap; the base comes from build-base.sh.
docker build -q --build-arg BASE_IMAGE=leasenet-base:bookworm \
  -t "${LEASENET_IMAGE:-leasenet:latest}" "$HERE" 2> >(grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e '^ *$' >&2) >/dev/null
echo "build-images: built ${LEASENET_IMAGE:-leasenet:latest}" >&2
"$HERE/make-certs.sh"
# Drop superseded/intermediate images of ours (dangling + our label), nobody else's.
docker image prune -f --filter label=io.leasenet.image=1 >/dev/null
