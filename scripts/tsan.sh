#!/usr/bin/env bash
# The daemon under ThreadSanitizer: builds fbmm with -sanitize=thread (in
# .build-tsan, beside the normal build), then runs the integration suites that
# drive the daemon hardest from many threads (FUSE file operations, programs
# under the shim, the pool, hostile brokers clients and fuzzing) against that
# binary. Every report the daemon writes is collected; the run fails if there is
# one. Usage: scripts/tsan.sh [swift test --filter REGEX] (as root, after
# scripts/setup.sh). Not part of scripts/test.sh: the build alone takes minutes.
set -eu -o pipefail
cd "$(dirname "$0")/.."
filter=${1:-'FileOperationTests|ShimTests|PoolTests|ReliabilityTests|TrustTests|TrustBoundaryTests|FaultTests|CowForkTests'}
bash scripts/build.sh debug >/dev/null          # the shim, test programs, workloads
swift build --build-tests >/dev/null
swift build --sanitize=thread --scratch-path .build-tsan --product fbmm 2>&1 | grep -E 'error|warning: unre' || true
bin=$(swift build --sanitize=thread --scratch-path .build-tsan --show-bin-path)
cp shim/build/libfbmm-shim.so "$bin/libfbmm-shim.so"
reports=$(mktemp -d /tmp/fbmm-tsan.XXXXXX)
chmod 0777 "$reports"   # daemons of unprivileged test users write here too
# halt_on_error=0: keep serving, so one report does not hide the next.
export TSAN_OPTIONS="log_path=$reports/report halt_on_error=0 second_deadlock_stack=1"
status=0
FBMM_BIN="$bin/fbmm" swift test --skip-build --no-parallel --filter "$filter" 2>&1 \
    | grep --line-buffered -E '^(✔|✘|􀢄|􁁛)|passed|failed|error' || status=$?
# Races, lock-order inversions, use-after-free...: every "WARNING:" counts.
# (libfuse's own worker threads, which are not instrumented, end with a
# "finished with ignores enabled" note; that is no report about our code.)
found=$(cat "$reports"/* 2>/dev/null | grep -c '^WARNING: ThreadSanitizer' || true)
if [ "$found" -gt 0 ]; then
    echo "tsan: $found report(s) in $reports:" >&2
    grep -h -A12 '^WARNING: ThreadSanitizer' "$reports"/* | head -120 >&2
    exit 1
fi
rm -rf "$reports"
echo "tsan: no ThreadSanitizer report from the daemon (suites: $filter)" >&2
exit "$status"
