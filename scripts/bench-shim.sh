#!/usr/bin/env bash
# Allocation micro-benchmarks of the shim on a real fbmm mount, against native
# anonymous memory measured in the same run (Benchmarks/alloc/bench.c):
#   (a) random 8-byte updates over a malloc'ed table (throughput; goal >= 0.97 of native)
#   (b) mmap + touch + munmap of 1 page and of 128 pages (ns per iteration),
#       with the pre-zeroed pool (the default) and without it (FBMM_PREZERO=0);
#       the daemon's CPU time during each run (it zeroes the pool's pages) is
#       added per iteration in a second ratio
#   (c) the same random updates on a huge=always mount (shmem THP) against
#       native 4 KiB pages (needs shmem THP allowed; ALLOW_SYSFS=1 lets the
#       script set shmem_enabled to advise for its run and restore it after)
# Native and fbmm runs alternate; each figure is the median of REPS runs.
# Usage: scripts/bench-shim.sh   (root, /dev/fuse; after scripts/build.sh)
# Knobs: REPS=5 TABLE_MIB=1024 UPDATES=50000000 ITERS_1=50000 ITERS_128=20000
#        HUGE_REPS=9 HUGE_UPDATES=100000000 ALLOW_SYSFS=0
#        FBMM=.build/debug/fbmm POLICY=local ALLOCATOR=system MIN_SIZE=4K
# MIN_SIZE is the shim's --min-size for the mmap runs: with the default (128K)
# a 1-page mmap is not redirected at all and (b) would compare native with native.
set -eu -o pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
REPS=${REPS:-5}
TABLE_MIB=${TABLE_MIB:-1024}
UPDATES=${UPDATES:-50000000}
ITERS_1=${ITERS_1:-50000}
ITERS_128=${ITERS_128:-20000}
POLICY=${POLICY:-local}
ALLOCATOR=${ALLOCATOR:-system}
MIN_SIZE=${MIN_SIZE:-4K}
bench_fbmm
make -s -C Benchmarks/alloc
BENCH=$PWD/Benchmarks/alloc/.build/bench

mnt=$(mktemp -d /tmp/fbmm-bench-shim.XXXXXX)
cleanup() { bench_umount "$mnt"; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
"$FBMM" mount "$mnt" --policy "$POLICY"
hmnt=$mnt-huge
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
thp_before=$(sed -E 's/.*\[(.*)\].*/\1/' "$thp" 2>/dev/null || echo none)
cleanup_all() {
    "$FBMM" umount "$hmnt" 2>/dev/null || true; rmdir "$hmnt" 2>/dev/null || true
    [ -n "${thp_set:-}" ] && echo "$thp_before" >"$thp"
    cleanup
}
trap cleanup_all EXIT

# one MODE KEY ARGS...: one run, prints the value of KEY (fbmm runs append
# the daemon's CPU ms during the run to $mnt.daemon)
one() {
    local mode=$1 key=$2; shift 2
    local out before
    if [ "$mode" = native ]; then out=$("$BENCH" "$@" ${NATIVE_EXTRA:-})
    else before=$(daemon_ms "$FBMM" "${RUN_MOUNT:-$mnt}")
        out=$("$FBMM" run --mount "${RUN_MOUNT:-$mnt}" --allocator "$ALLOCATOR" --min-size "$MIN_SIZE" --verbose -- env ${RUN_ENV:-FBMM_PREZERO=1} "$BENCH" "$@" 2>"$mnt.err") || { cat "$mnt.err" >&2; exit 1; }
        echo "$(daemon_ms "$FBMM" "${RUN_MOUNT:-$mnt}") - $before" | bc -l >>"$mnt.daemon"
        if grep -q "falling back" "$mnt.err" || ! grep -q "using fbmm mount" "$mnt.err"; then cat "$mnt.err" >&2; echo "the shim fell back: not measuring fbmm" >&2; exit 1; fi
    fi
    echo "$out" | awk -v k="$key" '$1 == k { print $2 }'
}

# bench NAME KEY ARGS...: REPS alternating native/fbmm runs; sets NATIVE and
# SHIM (medians) and DAEMON (the daemon's CPU ms per fbmm run, median)
bench() {
    local name=$1 key=$2; shift 2
    local n=() s=() i
    : >"$mnt.daemon"
    for ((i = 0; i < REPS; i++)); do
        n+=("$(one native "$key" "$@")")
        s+=("$(one fbmm "$key" "$@")")
    done
    NATIVE=$(printf '%s\n' "${n[@]}" | median)
    SHIM=$(printf '%s\n' "${s[@]}" | median)
    DAEMON=$(median <"$mnt.daemon")
    echo "# $name: native ${n[*]}" >&2
    echo "# $name: fbmm   ${s[*]}" >&2
}

echo "fbmm shim allocation benchmarks: $FBMM, policy $POLICY, allocator $ALLOCATOR, min size $MIN_SIZE, $REPS repetitions (medians), $(nproc) CPUs"
bench "table" updates_per_s table "$TABLE_MIB" "$UPDATES"
printf '%-34s native %12.0f  fbmm %12.0f  ratio fbmm/native %.3f (throughput; goal >= 0.97)\n' \
    "random updates, ${TABLE_MIB} MiB table (upd/s)" "$NATIVE" "$SHIM" "$(echo "$SHIM / $NATIVE" | bc -l)"
for pool in on off; do
    [ $pool = off ] && RUN_ENV=FBMM_PREZERO=0
    for spec in "1 $ITERS_1" "128 $ITERS_128"; do
        set -- $spec
        bench "mmap $1, pool $pool" ns_per_iter mmap "$1" "$2"
        # The pool's zeroing is the daemon's CPU: counted per iteration too.
        with=$(echo "$SHIM + $DAEMON * 1000000 / $2" | bc -l)
        printf '%-44s native %12.1f  fbmm %12.1f  ratio fbmm/native %.3f (time; goal <= %s); with the daemon CPU %.1f: %.3f\n' \
            "mmap+touch+munmap, $1 page(s), pool $pool (ns)" "$NATIVE" "$SHIM" "$(echo "$SHIM / $NATIVE" | bc -l)" \
            "$([ "$1" = 1 ] && echo 1.2 || echo 1.0)" "$with" "$(echo "$with / $NATIVE" | bc -l)"
    done
done
unset RUN_ENV

# (c) huge pages against native 4 KiB pages
if [ "$thp_before" = never ] && [ "${ALLOW_SYSFS:-0}" = 1 ]; then
    echo advise >"$thp" && thp_set=1 && echo "# set $thp to advise for this run (was never; restored at exit)"
fi
mkdir -p "$hmnt"
if err=$("$FBMM" mount "$hmnt" --policy "$POLICY" -o huge=always 2>&1); then
    # The machine's noise matters more here (memory-bound, seconds long): more runs.
    saved_reps=$REPS; REPS=${HUGE_REPS:-9}
    RUN_MOUNT=$hmnt NATIVE_EXTRA=4k bench "table, huge" updates_per_s table "$TABLE_MIB" "${HUGE_UPDATES:-100000000}"
    REPS=$saved_reps
    printf '%-44s native %12.0f  fbmm %12.0f  ratio fbmm/native %.3f (throughput; goal >= 1.2)\n' \
        "random updates, ${TABLE_MIB} MiB, huge vs 4K (upd/s)" "$NATIVE" "$SHIM" "$(echo "$SHIM / $NATIVE" | bc -l)"
else
    echo "huge pages: not measured: $err"
fi
rm -f "$mnt.err" "$mnt.daemon"
