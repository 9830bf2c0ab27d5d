#!/usr/bin/env bash
# A pip user's path, without a clone: build the wheel, install it into a fresh venv outside
# the checkout, build the computer image with the command the README gives, run the
# README's first examples (`commandlab demo`, the first Python one). Exits non-zero on any failure.
#
# The image goes to a throwaway tag (removed at the end), on the locally built base (no
# registry here): the default image other tests use is neither replaced nor, being built
# by scripts/build-images.sh from the same inputs, found "up to date" without a build.
# Usage: scripts/wheel-check.sh  (after scripts/setup.sh: it needs .venv and the base image)
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${COMMANDLAB_IMAGE_BASE:-commandlab/python-base:bookworm-ps-users}
TAG=commandlab-wheelcheck/computer:$$
work=$(mktemp -d)
cleanup() {
  docker rmi -f "$TAG" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The wheel, from a copy of the files git would ship (tracked or not ignored): the build
# leaves nothing in the checkout and sees no stray file of it.
mkdir "$work/src" "$work/dist"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' file; do [ ! -e "$file" ] || printf '%s\0' "$file"; done \
  | tar --null -cf - -T - | tar -xf - -C "$work/src"
.venv/bin/python -m pip wheel -q --no-deps -w "$work/dist" "$work/src"
wheel=$(echo "$work"/dist/commandlab_async-*.whl)

# A fresh venv, outside the checkout (dependencies from the index, through pip's cache).
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel"

# The README's first Python example, as written (it uses the default image).
awk '/^## Use/ { use = 1 } use && /^```python/ { block = 1; next } block && /^```/ { exit }
     block { print }' README.md > "$work/example.py"
[ -s "$work/example.py" ]

cd "$work"  # nothing of the checkout on sys.path from here on
unset PYTHONPATH
"$work/venv/bin/python" -c '
import sys, commandlab_async
where = commandlab_async.__file__
assert where.startswith(sys.prefix), f"imported from {where}, not the fresh venv"
'
"$work/venv/bin/commandlab" image build --base "$BASE" --tag "$TAG"
"$work/venv/bin/commandlab" demo --image "$TAG"
"$work/venv/bin/python" example.py
echo "wheel-check: ok"
