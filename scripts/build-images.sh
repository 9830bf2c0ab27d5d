#!/usr/bin/env bash
# Build the images the demo and the tests use, without any registry:
#   commandlab/python-base:bookworm-ps-users  a Debian rootfs with python3, procps (ps) and adduser/passwd
#                                    (mmdebstrap → docker import)
#   commandlab/computer:latest        the computer image FROM that base
# Each is built only when missing; the computer image is rebuilt when the daemon changes.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=commandlab/python-base:bookworm-ps-users
COMPUTER=commandlab/computer:latest

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || apt-get install -y -qq mmdebstrap >/dev/null
  echo "building $BASE with mmdebstrap (about a minute)"
  mmdebstrap --quiet --variant=essential --include=python3,procps,adduser,passwd bookworm - | docker import - "$BASE"
fi

# Every daemon module (names too: a rename changes what the zipapp holds), the Dockerfile
# and the base: a change to any of them rebuilds.  LC_ALL=C: one order, whatever the locale.
sha=$( export LC_ALL=C; { for file in commandlab_async/daemon/*.py commandlab_async/image/Dockerfile; do
           echo "$file"; cat "$file"; done; echo "$BASE"; } | sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{ index .Config.Labels "commandlab.daemon-sha" }}' "$COMPUTER" 2>/dev/null || true)
if [ "$have" != "$sha" ]; then
  echo "building $COMPUTER"
  # Quiet unless it fails (the legacy builder warns on stderr every time).
  if ! log=$(docker build -q --build-arg BASE="$BASE" --build-arg DAEMON_SHA="$sha" \
      -f commandlab_async/image/Dockerfile -t "$COMPUTER" commandlab_async 2>&1); then
    echo "$log" >&2
    exit 1
  fi
fi

