#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with the Swift toolchain:
# installs what it needs (apt packages, the qemu guest's kernel and virtme-ng),
# builds fbmm and its shim, then runs `swift test`: unit tests, real FUSE
# mounts, real programs under the shim, and placement in a 3-node guest.
# Run as root (FUSE mounts, apt). Exit status is swift test's.
set -eu -o pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
bash scripts/build.sh debug >/dev/null
log=$(mktemp)
if ! swift build --build-tests >"$log" 2>&1; then grep -E 'error' "$log" >&2 || cat "$log" >&2; rm -f "$log"; exit 1; fi
rm -f "$log"
echo "test: built in $(( $(date +%s) - start ))s; running swift test" >&2
test_mounts() { awk '$3 == "fuse.fbmm" && $2 ~ /fbmm-test-/ {print $2}' /proc/mounts | sort; }
before=$(test_mounts)
out=$(mktemp)
set +e
swift test --skip-build --no-parallel 2>&1 | grep --line-buffered -vE '^\[[0-9]+/[0-9]+\] |^Building for|^Build complete|^Compiling|^Planning' | tee "$out"
status=${PIPESTATUS[0]}
set -e
# One plain summary line (Swift Testing's own; XCTest, which has no tests here, prints "Executed 0").
total=$(sed -nE 's/^.*Test run with ([0-9]+) tests? in .*/\1/p' "$out" | tail -n 1)
failed=$(grep -E '^✘ Test .* failed after' "$out" | grep -cv '^✘ Test run with' || true)
rm -f "$out"
leftover=$(comm -13 <(echo "$before") <(test_mounts) | grep . || true)
if [ -n "$leftover" ]; then
    echo "test: FAIL: mounts left behind: $leftover" >&2
    for m in $leftover; do umount -l "$m" || true; done
    status=1
fi
echo "test: finished in $(( $(date +%s) - start ))s, exit $status" >&2
[ -n "$total" ] && echo "$(( total - failed )) passed, $failed failed"
exit "$status"
