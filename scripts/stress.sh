#!/usr/bin/env bash
# The test command under load: two CPU-bound processes run beside it for its whole run,
# so a test whose pass depends on an idle machine fails here rather than by chance in CI.
#   scripts/stress.sh                                   every test, as scripts/test.sh
#   scripts/stress.sh tests/platforms/test_kubernetes_clouds.py   some of them
# HOGS=N changes the number of busy processes (default 2: this machine's core count).
set -euo pipefail
cd "$(dirname "$0")/.."

hogs=()
stop_hogs() {
  if [ "${#hogs[@]}" -gt 0 ]; then
    kill "${hogs[@]}" 2>/dev/null || true
    wait "${hogs[@]}" 2>/dev/null || true
  fi
}
trap stop_hogs EXIT
for _ in $(seq 1 "${HOGS:-2}"); do
  python3 -c 'while True: pass' &
  hogs+=("$!")
done
echo "stress: ${#hogs[@]} busy processes beside the tests (pids ${hogs[*]})"
start=$(date +%s)
status=0
scripts/test.sh "$@" || status=$?
echo "stress: tests took $(( $(date +%s) - start )) s under load, exit status $status"
exit "$status"
