#!/usr/bin/env bash
# stress-ng's malloc stressor at its default settings (one worker; blocks up
# to its default --malloc-bytes, frees and reallocs at random), natively and
# under the shim on a real mount, runs alternating; the median bogo ops per
# second of REPS runs each and the ratio, with the daemon's CPU time per
# fbmm run beside it. Issue 15 asked that it run under the shim at its
# defaults (an earlier soak had to bound it for time).
# Usage: scripts/bench-stress-malloc.sh   (root, /dev/fuse; after scripts/build.sh)
# Knobs: SECONDS_PER_RUN=10 REPS=3 FBMM=.build/release/fbmm
set -eu -o pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
T=${SECONDS_PER_RUN:-10}
REPS=${REPS:-3}
bench_fbmm
command -v stress-ng >/dev/null || { echo "stress-ng is needed (apt install stress-ng)" >&2; exit 1; }
mnt=$(mktemp -d /tmp/fbmm-bench-stress.XXXXXX)
cleanup() { bench_umount "$mnt"; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
"$FBMM" mount "$mnt"
# bogo ops/s (real time) from --metrics-brief's malloc line.
rate() { awk '/metrc:.* malloc / { print $(NF - 1) }'; }
nat=() fb=() dm=()
for _ in $(seq "$REPS"); do
    nat+=("$(stress-ng --malloc 1 --timeout "${T}s" --metrics-brief 2>&1 | rate)")
    d0=$(daemon_ms "$FBMM" "$mnt")
    out=$("$FBMM" run --mount "$mnt" -- stress-ng --malloc 1 --timeout "${T}s" --metrics-brief 2>&1)
    d1=$(daemon_ms "$FBMM" "$mnt")
    echo "$out" | grep -q "successful run completed" || { echo "stress-ng under the shim failed:" >&2; echo "$out" >&2; exit 1; }
    fb+=("$(echo "$out" | rate)")
    dm+=("$(echo "$d1 - $d0" | bc -l)")
done
N=$(printf '%s\n' "${nat[@]}" | median); F=$(printf '%s\n' "${fb[@]}" | median); D=$(printf '%s\n' "${dm[@]}" | median)
echo "stress-ng --malloc 1, defaults, ${T} s runs (median of $REPS; fbmm: $FBMM)"
printf '%-10s %14s %14s %8s %16s\n' stressor native-ops/s fbmm-ops/s ratio daemon-cpu-ms
printf '%-10s %14.0f %14.0f %8.2f %16.0f\n' malloc "$N" "$F" "$(echo "$F / $N" | bc -l)" "$D"
