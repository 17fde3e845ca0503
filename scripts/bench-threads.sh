#!/usr/bin/env bash
# Threads allocating and freeing concurrently (Benchmarks/alloc `bench
# threads`: each thread mallocs a SIZE block, writes a byte per page, frees
# it, ITERS times), natively and under `fbmm run`, alternating; medians of
# REPS. Prints throughput per thread count and its scaling from 1 thread,
# natively and under fbmm (issue 15: fbmm's scaling no worse than native's).
# On a 2-core machine counts above 2 measure oversubscription, not scaling.
# Usage: scripts/bench-threads.sh   (root, /dev/fuse; after scripts/build.sh)
# Knobs: REPS=5 THREADS="1 2 4 8" ITERS=20000 SIZE=256K FBMM=... POLICY=local
set -eu -o pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
REPS=${REPS:-5}
THREADS=${THREADS:-1 2 4 8}
ITERS=${ITERS:-20000}
SIZE=${SIZE:-256K}
POLICY=${POLICY:-local}
FBMM=${FBMM:-$( [ -x .build/release/fbmm ] && [ -f .build/release/libfbmm-shim.so ] && echo .build/release/fbmm || echo .build/debug/fbmm )}
[ -x "$FBMM" ] || { echo "no fbmm at $FBMM: run scripts/build.sh" >&2; exit 1; }
make -s -C Benchmarks/alloc
BENCH=$PWD/Benchmarks/alloc/.build/bench
bytes=$(numfmt --from=iec "$SIZE")

mnt=$(mktemp -d /tmp/fbmm-bench-threads.XXXXXX)
cleanup() { "$FBMM" umount "$mnt" 2>/dev/null || "$FBMM" umount --force "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
"$FBMM" mount "$mnt" --policy "$POLICY"

value() { awk '$1 == "ops_per_s" { print $2 }'; }
echo "threads allocating and freeing $SIZE blocks, $ITERS per thread, medians of $REPS; $FBMM, $(nproc) CPUs"
printf '%-8s %14s %14s %8s %14s %14s %10s\n' threads "native ops/s" "fbmm ops/s" ratio "native scaling" "fbmm scaling" "daemon ms"
base_n= base_f=
for t in $THREADS; do
    n=() f=() d=()
    for ((i = 0; i < REPS; i++)); do
        n+=("$("$BENCH" threads "$t" "$ITERS" "$bytes" | value)")
        before=$(daemon_ms "$FBMM" "$mnt")
        f+=("$("$FBMM" run --quiet --mount "$mnt" -- "$BENCH" threads "$t" "$ITERS" "$bytes" | value)")
        d+=("$(echo "$(daemon_ms "$FBMM" "$mnt") - $before" | bc -l)")
    done
    N=$(printf '%s\n' "${n[@]}" | median); F=$(printf '%s\n' "${f[@]}" | median); D=$(printf '%s\n' "${d[@]}" | median)
    base_n=${base_n:-$N}; base_f=${base_f:-$F}
    printf '%-8s %14.0f %14.0f %8.3f %14.2f %14.2f %10.0f\n' "$t" "$N" "$F" "$(echo "$F / $N" | bc -l)" \
        "$(echo "$N / $base_n" | bc -l)" "$(echo "$F / $base_f" | bc -l)" "$D"
done
