#!/usr/bin/env bash
# Rolling upgrade of a leasenet swarm stack (stack.yaml): every leasenet service in turn to IMAGE,
# each by `docker service update --image` under its own update_config (one task at a time;
# replicated hosts start-first, consumer hosts stop-first; each replaced host drains on SIGTERM).
# The next service starts only once the last one converged; a service whose update did not
# complete (rolled back or paused) stops the upgrade with exit 1. Prints each service's time and
# the whole upgrade's. The images are local (no registry is asked for a digest).
# Usage: swarm-upgrade.sh STACK IMAGE [SERVICE...]   (default: every leasenet service below)
set -euo pipefail

STACK=${1:?usage: swarm-upgrade.sh STACK IMAGE [SERVICE...]}
IMAGE=${2:?usage: swarm-upgrade.sh STACK IMAGE [SERVICE...]}
shift 2
# the leasing agents first, then the producer hosts, then the consumer hosts (the jobs and etcd
# are not leasenet servers: they keep their image)
SERVICES=("$@")
((${#SERVICES[@]})) || SERVICES=(registry producer notebook consumer1 consumer2 consumer3)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

started=$(now)
for service in "${SERVICES[@]}"; do
  name=${STACK}_$service
  t=$(now)
  if [[ $(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$name") == "$IMAGE" ]]; then
    echo "swarm-upgrade: $name runs $IMAGE already"
    continue
  fi
  before=$(docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.StartedAt}}{{end}}' "$name")
  docker service update --detach --quiet --no-resolve-image --image "$IMAGE" "$name" >/dev/null
  # until swarm says this update is over: completed, or rolled back / paused on a failure (the CLI's
  # --detach=false returns once the tasks run, before the last one's `monitor` window)
  until [[ $(docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.StartedAt}}{{end}}' "$name") != "$before" ]] &&
        state=$(docker service inspect -f '{{.UpdateStatus.State}}' "$name") &&
        [[ $state =~ ^(completed|paused|rollback_completed|rollback_paused)$ ]]; do
    (( $(date +%s) - ${t%.*} < ${LEASENET_UPGRADE_TIMEOUT:-600} )) || { echo "swarm-upgrade: $name still updating" >&2; exit 1; }
    sleep 1
  done
  if [[ $state != completed ]]; then
    echo "swarm-upgrade: $name: update ${state:-not started}: $(docker service inspect -f \
      '{{if .UpdateStatus}}{{.UpdateStatus.Message}}{{end}}' "$name")" >&2
    exit 1
  fi
  echo "swarm-upgrade: $name runs $IMAGE ($(since "$t") s)"
done
echo "swarm-upgrade: ${#SERVICES[@]} services upgraded to $IMAGE in $(since "$started") s"
