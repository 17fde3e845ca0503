#!/usr/bin/env bash
# `make -j2` of a real C project (the shim's own 17 sources, copied to a
# scratch directory) natively and under `fbmm run`, alternating; medians of
# REPS. Every compiler process is short-lived, so this measures what each
# process pays to start using the mount (arena creation, the broker, the
# pool's first fill) and the daemon's CPU spent on it, which is counted.
# Usage: scripts/bench-make.sh   (root, /dev/fuse; after scripts/build.sh)
# Knobs: REPS=5 JOBS=2 FBMM=.build/release/fbmm (else debug) POLICY=local
set -eu -o pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
REPS=${REPS:-5}
JOBS=${JOBS:-2}
POLICY=${POLICY:-local}
bench_fbmm

work=$(mktemp -d /tmp/fbmm-bench-make.XXXXXX)
mnt=$work/mnt
cleanup() { bench_umount "$mnt"; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/src/Sources/CFBMMSys" "$mnt"
cp -r shim "$work/src/shim" && rm -rf "$work/src/shim/build"
cp -r Sources/CFBMMSys/include "$work/src/Sources/CFBMMSys/"
"$FBMM" mount "$mnt" --policy "$POLICY"
project=$work/src/shim

now() { date +%s.%N; }
native=() fbmm=() daemon=()
for ((i = 0; i < REPS; i++)); do
    make -s -C "$project" clean
    s=$(now); make -s -j"$JOBS" -C "$project" all >/dev/null; e=$(now)
    native+=("$(echo "$e - $s" | bc -l)")
    make -s -C "$project" clean
    d=$(daemon_ms "$FBMM" "$mnt")
    s=$(now); "$FBMM" run --quiet --mount "$mnt" -- make -s -j"$JOBS" -C "$project" all >/dev/null; e=$(now)
    fbmm+=("$(echo "$e - $s" | bc -l)")
    daemon+=("$(echo "$(daemon_ms "$FBMM" "$mnt") - $d" | bc -l)")
done
n=$(printf '%s\n' "${native[@]}" | median)
f=$(printf '%s\n' "${fbmm[@]}" | median)
d=$(printf '%s\n' "${daemon[@]}" | median)
echo "make -j$JOBS of the shim ($(ls "$project"/src/*.c | wc -l) C files), $REPS runs alternating, medians; $FBMM, $(nproc) CPUs"
printf 'native %.3f s   fbmm %.3f s   ratio %.3f (goal <= 1.2)   daemon CPU per build %.0f ms\n' "$n" "$f" "$(echo "$f / $n" | bc -l)" "$d"
echo "# native: ${native[*]}"
echo "# fbmm:   ${fbmm[*]}"
echo "# daemon ms: ${daemon[*]}"
files=$("$FBMM" stat --json "$mnt" | grep -c '"owner_pid"' || true)
[ "$files" = 0 ] || echo "warning: $files files left in the mount" >&2
