#!/usr/bin/env bash
# Issue 15's burst: N live 256 KiB blocks malloc'ed (one byte written in
# each), then freed in random order (Benchmarks/alloc `bench burst N SIZE`),
# natively and under the shim with its defaults (the pre-zeroed pool on) and
# with FBMM_PREZERO=0, runs alternating; the median of REPS runs each, in ns
# per malloc or free. The daemon's CPU time during the runs (it zeroes what
# the pool hands back) is added per operation in the last column.
# Usage: scripts/bench-burst.sh   (root, /dev/fuse; after scripts/build.sh)
# Knobs: COUNTS="1000 10000 100000" SIZE=262144 REPS=5 FBMM=.build/release/fbmm
#        TOUCH=one (a byte per block; TOUCH=all: a byte per page)
set -eu -o pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
COUNTS=${COUNTS:-"1000 10000 100000"}
SIZE=${SIZE:-262144}
TOUCH=${TOUCH:-one}
case $TOUCH in one) touch=() ;; all) touch=(all) ;; *) echo "TOUCH is one or all" >&2; exit 2 ;; esac
REPS=${REPS:-5}
bench_fbmm
make -s -C Benchmarks/alloc
BENCH=$PWD/Benchmarks/alloc/.build/bench
mnt=$(mktemp -d /tmp/fbmm-bench-burst.XXXXXX)
cleanup() { bench_umount "$mnt"; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
"$FBMM" mount "$mnt"

ns() { awk '/^ns_per_op/ { print $2 }'; }
failed() { awk '/^failed/ { s += $2 } END { print s + 0 }'; }
echo "burst of live ${SIZE}-byte blocks (touched: $TOUCH), ns per malloc or free (median of $REPS; fbmm: $FBMM)"
printf '%-8s %9s %9s %7s %9s %7s %9s %7s %s\n' blocks native fbmm ratio +daemon ratio nopool ratio failed
for n in $COUNTS; do
    nat=() fb=() fbd=() np=() fails=0
    for _ in $(seq "$REPS"); do
        nat+=("$("$BENCH" burst "$n" "$SIZE" "${touch[@]}" | ns)")
        d0=$(daemon_ms "$FBMM" "$mnt")
        out=$("$FBMM" run --quiet --mount "$mnt" -- "$BENCH" burst "$n" "$SIZE" "${touch[@]}")
        d1=$(daemon_ms "$FBMM" "$mnt")
        v=$(echo "$out" | ns); fb+=("$v")
        fbd+=("$(echo "$v + ($d1 - $d0) * 1000000 / (2 * $n)" | bc -l)")
        fails=$((fails + $(echo "$out" | failed)))
        out=$(FBMM_PREZERO=0 "$FBMM" run --quiet --mount "$mnt" -- "$BENCH" burst "$n" "$SIZE" "${touch[@]}")
        np+=("$(echo "$out" | ns)")
        fails=$((fails + $(echo "$out" | failed)))
    done
    N=$(printf '%s\n' "${nat[@]}" | median); F=$(printf '%s\n' "${fb[@]}" | median)
    D=$(printf '%s\n' "${fbd[@]}" | median); P=$(printf '%s\n' "${np[@]}" | median)
    printf '%-8s %9.0f %9.0f %7.2f %9.0f %7.2f %9.0f %7.2f %s\n' "$n" "$N" "$F" "$(echo "$F / $N" | bc -l)" \
        "$D" "$(echo "$D / $N" | bc -l)" "$P" "$(echo "$P / $N" | bc -l)" "$fails"
done
