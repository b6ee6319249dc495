#!/usr/bin/env bash
# The deployment's certificates, made with `leasenet certs` (from the leasenet image just built,
# so the host needs no Python packages) into docker/certs/ on this host (gitignored):
#   certs/ca/ca.crt, ca.key   the cluster CA; its key stays here and is mounted nowhere
#   certs/<service>/          ca.crt + <kind>-<id>.crt/.key of that one service, mounted
#                             read-only at /etc/leasenet-tls in that service only
#   certs/operator/           operator/admin: the operator tools on the host (`leasenet leases
#                             --tls-dir docker/certs/operator`) and test helpers
# etcd members' certificates name the member (SAN etcdN: peers and clients dial it so); the
# one-shot etcd-auth job uses etcd1's (CN root, as etcd's bootstrap needs), and enrols every other
# identity here in etcd (compose.yaml: its --enrol list): each certificate's CN is its own etcd user.
# Keys are 0600 and owned by uid 10001, the leasenet user of the image: the leasenet containers
# read them as that user, etcd as root. Idempotent: existing certificates are kept; a new CA
# (after `rm -rf docker/certs`) re-issues everything.
# Usage: make-certs.sh [CERTS_DIR]   (default docker/certs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CERTS=$(mkdir -p "${1:-$HERE/certs}" && cd "${1:-$HERE/certs}" && pwd)
IMAGE=${LEASENET_IMAGE:-leasenet:latest}
USER_ID=10001  # the image's leasenet user (Dockerfile)

# service kind id [san]
IDENTITIES=(
  "etcd1 etcd etcd1 etcd1" "etcd2 etcd etcd2 etcd2" "etcd3 etcd etcd3 etcd3"
  "registry1 registry registry1" "registry2 registry registry2"
  "producer1 producer producer1" "producer2 producer producer2" "producer3 producer producer3"
  "producer producer producer"
  "notebook1 producer notebook1" "notebook2 producer notebook2"
  "consumer1 consumer consumer1" "consumer2 consumer consumer2" "consumer3 consumer consumer3"
  "traffic operator traffic" "operator operator admin"
  # the swarm stack's replicated services (stack.yaml): one identity per service, shared by its
  # tasks (host ids <id>.<container>), as the compose file's scalable `producer` service
  "registry registry registry" "notebook producer notebook"
)

# Inside the container, as root on the bind-mounted directory; no network.
docker run --rm -i --network none --user 0 -e KEY_OWNER="$USER_ID" -v "$CERTS:/certs" --entrypoint bash "$IMAGE" -s -- "${IDENTITIES[@]}" <<'SCRIPT'
set -euo pipefail
cd /certs
if [[ ! -s ca/ca.crt || ! -s ca/ca.key ]]; then
  for entry in "$@"; do rm -rf -- "${entry%% *}"; done  # an older CA's certificates: refused now
  leasenet certs create-ca --tls-dir ca >/dev/null
  echo "make-certs: made a new CA" >&2
fi
made=()
for entry in "$@"; do
  read -r service kind id san <<<"$entry"
  mkdir -p "$service"
  cp ca/ca.crt "$service/ca.crt"
  # kept unless its CN is not its own etcd user (leasenet-<kind>-<id>; root for etcd): certificates
  # made before per-host identities named their kind only, and etcd would know no such user
  cn="leasenet-$kind-$id"; [[ $kind == etcd ]] && cn=root
  [[ -s "$service/$kind-$id.crt" && -s "$service/$kind-$id.key" ]] \
    && leasenet certs list --tls-dir "$service" | grep -q "^$kind-$id.crt: CN=$cn until" && continue
  leasenet certs create --tls-dir "$service" --ca-key ca/ca.key --kind "$kind" --id "$id" \
    ${san:+--san "$san"} --overwrite >/dev/null
  made+=("$kind/$id")
done
chown "$KEY_OWNER:$KEY_OWNER" -- */*.key
chmod 0600 -- */*.key
chmod 0644 -- */*.crt
chown 0:0 ca/ca.key
chmod 0755 . */
echo "make-certs: ${#made[@]} certificates made${made:+ (${made[*]})}, $(($# - ${#made[@]})) kept" >&2
SCRIPT
echo "make-certs: certificates in $CERTS (uid $USER_ID owns the keys)" >&2
