#!/usr/bin/env bash
# Build the images the demo and the tests use, without any registry:
#   commandlab/python-base:bookworm-ps-users  a Debian rootfs with python3, procps (ps) and adduser/passwd
#                                    (mmdebstrap → docker import)
#   commandlab/computer:latest        the computer image FROM that base
# and, when asked for, the desktop images (the same Dockerfile with DESKTOP=xvfb):
#   commandlab/desktop-base:bookworm          a Debian rootfs with the packages of
#                                    commandlab_async/image/desktop.packages (Xvfb, openbox, ...)
#   commandlab/desktop:latest         the desktop image FROM that base
#   commandlab/desktop-browser-base:bookworm  the same plus desktop-browser.packages (chromium)
#   commandlab/desktop-browser:latest the browser image FROM that base
#
# Usage: scripts/build-images.sh [computer | desktop | desktop-browser | all]...
# No argument: the computer image only (what scripts/setup.sh builds).
# Each base is built only when missing (a desktop base also when its package list changed);
# each image is rebuilt when the daemon, the Dockerfile or (desktop images) its base,
# package lists or Inspect computer tool (inspect_computer_tool.py) change.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 [computer | desktop | desktop-browser | all]..."; }

want_computer='' want_desktop='' want_browser=''
[ $# -gt 0 ] || set -- computer
for arg in "$@"; do
  case $arg in
    computer) want_computer=1 ;;
    desktop) want_desktop=1 ;;
    desktop-browser) want_browser=1 ;;
    all) want_computer=1 want_desktop=1 want_browser=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

BASE=commandlab/python-base:bookworm-ps-users
COMPUTER=commandlab/computer:latest
DESKTOP_BASE=commandlab/desktop-base:bookworm
DESKTOP=commandlab/desktop:latest
BROWSER_BASE=commandlab/desktop-browser-base:bookworm
BROWSER=commandlab/desktop-browser:latest
DESKTOP_PACKAGES=commandlab_async/image/desktop.packages
BROWSER_PACKAGES=commandlab_async/image/desktop-browser.packages
# What the desktop images copy besides the daemon: Inspect's computer tool.
DESKTOP_FILES=(commandlab_async/image/inspect_computer_tool.py)

# build_image IMAGE BASE DESKTOP [FILE...]: build IMAGE from the Dockerfile FROM BASE with
# --build-arg DESKTOP (none when empty) unless its commandlab.daemon-sha label is already
# the hash of its inputs: every daemon module (names too: a rename changes what the zipapp
# holds), the Dockerfile, the FILEs and the base's name; for a desktop image also DESKTOP
# and the base's image id (a rebuilt base rebuilds).  For the computer image this is the
# hash it has always had.  LC_ALL=C: one order, whatever the locale.
build_image() {
  local image=$1 base=$2 desktop=$3 sha log
  shift 3
  local args=(--build-arg BASE="$base")
  sha=$( export LC_ALL=C
         { for file in commandlab_async/daemon/*.py commandlab_async/image/Dockerfile "$@"; do
             echo "$file"; cat "$file"; done
           echo "$base"
           if [ -n "$desktop" ]; then echo "$desktop"; docker image inspect -f '{{.Id}}' "$base"; fi
         } | sha256sum | cut -c1-16)
  [ "$(label "$image" commandlab.daemon-sha)" != "$sha" ] || return 0
  echo "building $image"
  [ -z "$desktop" ] || args+=(--build-arg DESKTOP="$desktop")
  # Quiet unless it fails (the legacy builder warns on stderr every time).
  if ! log=$(docker build -q "${args[@]}" --build-arg DAEMON_SHA="$sha" \
      -f commandlab_async/image/Dockerfile -t "$image" commandlab_async 2>&1); then
    echo "$log" >&2
    exit 1
  fi
}

# label IMAGE KEY: the value of IMAGE's label KEY; empty when IMAGE or the label is missing.
label() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# packages FILE...: the packages the FILEs list (any number a line, # comments), comma-separated.
packages() {
  awk '{ sub(/#.*/, ""); for (i = 1; i <= NF; i++) printf "%s%s", (n++ ? "," : ""), $i }' "$@"
}

# The desktop bases' mmdebstrap options.  No Recommends (mmdebstrap's default); no docs (but
# the copyrights), man pages or translations (the images run in C.UTF-8); and no usrmerge:
# the essential init-system-helpers depends on "usrmerge | usr-is-merged", apt takes
# usrmerge, which brings perl (about 50 MB); the merged-usr hook makes the /usr symlinks as
# debootstrap does and installs usr-is-merged instead (the same layout as the computer base).
DESKTOP_MMDEBSTRAP=(--variant=essential --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*')

# build_desktop_base IMAGE FILE...: a bookworm rootfs with the packages the FILEs list, made
# with the options above, when IMAGE is missing or was made from another list (comments
# aside) or other options: its commandlab.packages-sha label holds their hash.  Through a
# file, not a pipe, so that a failed mmdebstrap cannot leave an image behind.
build_desktop_base() {
  local image=$1 list sha tmp log
  shift
  list=$(packages "$@")
  sha=$(printf '%s\n' "$list" "${DESKTOP_MMDEBSTRAP[@]}" | sha256sum | cut -c1-16)
  [ "$(label "$image" commandlab.packages-sha)" != "$sha" ] || return 0
  command -v mmdebstrap >/dev/null || apt-get install -y -qq mmdebstrap >/dev/null
  echo "building $image with mmdebstrap"
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand $tmp now: it is local
  trap "rm -rf '$tmp'" EXIT
  # Quiet unless it fails (the merged-usr hook talks).
  if ! log=$(mmdebstrap --quiet "${DESKTOP_MMDEBSTRAP[@]}" --include="$list" bookworm \
      "$tmp/rootfs.tar" 2>&1); then
    echo "$log" >&2
    exit 1
  fi
  docker import --change "LABEL commandlab.packages-sha=$sha" "$tmp/rootfs.tar" "$image" >/dev/null
  rm -rf "$tmp"
  trap - EXIT
}

if [ -n "$want_computer" ]; then
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null || apt-get install -y -qq mmdebstrap >/dev/null
    echo "building $BASE with mmdebstrap (about a minute)"
    mmdebstrap --quiet --variant=essential --include=python3,procps,adduser,passwd bookworm - | docker import - "$BASE"
  fi
  build_image "$COMPUTER" "$BASE" ''
fi

if [ -n "$want_desktop" ]; then
  build_desktop_base "$DESKTOP_BASE" "$DESKTOP_PACKAGES"
  build_image "$DESKTOP" "$DESKTOP_BASE" xvfb "$DESKTOP_PACKAGES" "${DESKTOP_FILES[@]}"
fi

if [ -n "$want_browser" ]; then
  build_desktop_base "$BROWSER_BASE" "$DESKTOP_PACKAGES" "$BROWSER_PACKAGES"
  build_image "$BROWSER" "$BROWSER_BASE" xvfb "$DESKTOP_PACKAGES" "$BROWSER_PACKAGES" \
    "${DESKTOP_FILES[@]}"
fi
