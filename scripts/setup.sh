#!/usr/bin/env bash
# Make this machine ready to run commandlab-async on local Docker (idempotent; Debian, root):
# Docker Engine (Debian's docker.io), dockerd running, a .venv with the package and its
# dev extras, and the locally built images. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ ! -f /var/lib/apt/lists/.commandlab-updated ]; then
    apt-get update -qq && touch /var/lib/apt/lists/.commandlab-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v dockerd >/dev/null || { echo "installing docker.io"; apt_install docker.io; }
command -v mmdebstrap >/dev/null || apt_install mmdebstrap
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  nohup dockerd >/var/log/commandlab-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -n 20 /var/log/commandlab-dockerd.log; exit 1; }
fi

stamp=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat .venv/.commandlab-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "installing the package into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$stamp" > .venv/.commandlab-stamp
fi

scripts/build-images.sh
