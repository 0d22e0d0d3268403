#!/usr/bin/env bash
# Make sure a Docker engine answers. Idempotent.
#
# - If `docker info` already answers: print the engine version and exit 0.
# - Else, on Debian as root: install docker.io, runsc (gVisor) and debootstrap
#   when missing, register runsc in /etc/docker/daemon.json, start dockerd in
#   the background (no bridge, no iptables: sandboxes never get a network) and
#   wait until it answers.
# - Elsewhere: print what to install and exit 1.
set -euo pipefail

WAIT_SECONDS=${SANDGATE_ENGINE_WAIT_SECONDS:-60}
LOG=${SANDGATE_ENGINE_LOG:-/var/log/sandgate-dockerd.log}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_answers; then
  echo "engine: docker $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers"
  exit 0
fi

is_debian_root() {
  [ "$(id -u)" = 0 ] && [ -r /etc/os-release ] && grep -qE '^(ID|ID_LIKE)=.*debian' /etc/os-release
}

if ! is_debian_root; then
  cat >&2 <<'MSG'
engine: no Docker engine answers, and this is not a Debian machine with root,
so sandgate will not install one for you. Install and start Docker
(https://docs.docker.com/engine/install/), optionally gVisor's runsc
registered as a runtime named "runsc", then run this again.
MSG
  exit 1
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v runsc >/dev/null 2>&1 || need+=(runsc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "engine: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p /etc/docker
if [ ! -s /etc/docker/daemon.json ] || ! grep -q runsc /etc/docker/daemon.json; then
  cat > /etc/docker/daemon.json <<'JSON'
{"runtimes":{"runsc":{"path":"/usr/bin/runsc","runtimeArgs":["--network=none"]}}}
JSON
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  if ! pgrep -x containerd >/dev/null 2>&1 && command -v containerd >/dev/null 2>&1; then
    :  # dockerd starts its own managed containerd
  fi
  echo "engine: starting dockerd (log: $LOG)"
  nohup setsid dockerd --bridge=none --iptables=false --ip6tables=false >"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 "$WAIT_SECONDS"); do
  if engine_answers; then
    echo "engine: docker $(docker version --format '{{.Server.Version}}') answers"
    exit 0
  fi
  sleep 1
done
echo "engine: dockerd did not answer within ${WAIT_SECONDS}s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
