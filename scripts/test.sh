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
echo "test: built in $(( $(date +%s) - start ))s; running swift test" >&2
# Clean up any mount a previous interrupted run left behind.
for m in $(awk '$3 == "fuse.fbmm" && $2 ~ /fbmm-test-/ {print $2}' /proc/mounts); do umount -l "$m" || true; done
set +e
swift test --skip-build --no-parallel 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\] |^Building for|^Build complete|^Compiling|^Planning'
status=${PIPESTATUS[0]}
set -e
leftover=$(awk '$3 == "fuse.fbmm" && $2 ~ /fbmm-test-/ {print $2}' /proc/mounts)
if [ -n "$leftover" ]; then
    echo "test: FAIL: mounts left behind: $leftover" >&2
    for m in $leftover; do umount -l "$m" || true; done
    status=1
fi
echo "test: finished in $(( $(date +%s) - start ))s, exit $status" >&2
exit "$status"
