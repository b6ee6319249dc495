#!/usr/bin/env bash
# Make a working docker engine, docker-compose (v1) and debootstrap available. Idempotent:
# installs only what is missing and starts dockerd only if `docker info` does not answer.
#
# What worked on the dev sandbox (Debian bookworm, kernel 6.18, cgroup v1, ext4 root, root
# with full capabilities, no systemd as PID 1): plain `dockerd` with its defaults
# (overlay2 storage driver, iptables on), answering `docker info` ~2 s after start.
# The fallbacks (vfs storage, then no iptables) are for hosts where overlay mounts or
# netfilter are not allowed; compose networking and 127.0.0.1 port publishing still
# work there (same-bridge traffic and docker's userland proxy need neither). Without
# iptables, `internal: true` networks are not enforced, so forwarding is off as well.
# (The vfs fallback was exercised here with a dockerd stand-in that refuses overlay2.)
set -euo pipefail

LOG=${LEASENET_DOCKERD_LOG:-/var/log/leasenet-dockerd.log}
TIMEOUT=${LEASENET_DOCKERD_TIMEOUT:-60}   # seconds per dockerd start attempt

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  echo "install-docker: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

# Start dockerd with the given extra flags; succeed once `docker info` answers, fail
# (and stop that dockerd) if it exits or the deadline passes.
try_dockerd() {
  echo "install-docker: starting dockerd $*" >&2
  nohup dockerd "$@" >>"$LOG" 2>&1 &
  local pid=$! deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    docker_ok && { echo "install-docker: dockerd up (pid $pid, flags: ${*:-none})" >&2; return 0; }
    kill -0 "$pid" 2>/dev/null || { echo "install-docker: dockerd exited, see $LOG" >&2; return 1; }
    sleep 0.5
  done
  echo "install-docker: dockerd not answering after ${TIMEOUT}s, stopping it" >&2
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 1
}

docker_ok && exit 0
# On hosts with systemd the package starts the service itself; use it if present.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
  systemctl start docker >/dev/null 2>&1 || true
  docker_ok && exit 0
fi
try_dockerd ||
  try_dockerd --storage-driver=vfs ||
  try_dockerd --storage-driver=vfs --iptables=false --ip-masq=false --ip-forward=false ||
  { echo "install-docker: could not start dockerd, see $LOG" >&2; exit 1; }
