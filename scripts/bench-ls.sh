#!/usr/bin/env bash
# Listing a large directory in an fbmm mount against the same directory on
# tmpfs, in the same run (issue 15: `ls` of 100,000 files within 2x of
# tmpfs). N empty files are created in each (python3, one open/close each),
# then each listing is timed REPS times, fbmm and tmpfs alternating:
#   ls -f DIR    readdir only (no sort, no stat)
#   ls DIR       readdir and sort, what a user types
#   ls -l DIR    readdir, then lookup+getattr of every entry
# The wall time includes the daemon's work (ls waits on every FUSE request);
# the daemon's CPU time over all fbmm listings is printed beside it.
# Usage: scripts/bench-ls.sh   (root, /dev/fuse; after scripts/build.sh)
# Knobs: N=100000 REPS=5 FBMM=.build/debug/fbmm
set -eu -o pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
N=${N:-100000}
REPS=${REPS:-5}
FBMM=${FBMM:-$( [ -x .build/release/fbmm ] && echo .build/release/fbmm || echo .build/debug/fbmm )}
[ -x "$FBMM" ] || { echo "no fbmm at $FBMM: run scripts/build.sh" >&2; exit 1; }

work=$(mktemp -d /tmp/fbmm-bench-ls.XXXXXX)
mkdir -p "$work/fbmm" "$work/tmpfs"
cleanup() {
    "$FBMM" umount "$work/fbmm" 2>/dev/null || "$FBMM" umount --force "$work/fbmm" 2>/dev/null || true
    umount "$work/tmpfs" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mount -t tmpfs -o size=1G,nr_inodes=0 fbmm-bench-ls "$work/tmpfs"
"$FBMM" mount "$work/fbmm"
daemon=$("$FBMM" stat --json "$work/fbmm" | python3 -c 'import json, sys; print(json.load(sys.stdin)["daemon_pid"])')

create() {
    python3 - "$1" "$N" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    os.close(os.open(f"{d}/file-{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
PY
}
start=$(date +%s%N); create "$work/fbmm/big"; made_f=$(( ($(date +%s%N) - start) / 1000000 ))
start=$(date +%s%N); create "$work/tmpfs/big"; made_t=$(( ($(date +%s%N) - start) / 1000000 ))

ms() { local s; s=$(date +%s%N); "$@" > /dev/null; echo $(( ($(date +%s%N) - s) / 1000000 )); }
cpu_ms() { awk '{ print int(($14 + $15) * 1000 / '"$(getconf CLK_TCK)"') }' "/proc/$daemon/stat"; }

echo "listing $N files (median of $REPS; ratio = fbmm / tmpfs; fbmm: $FBMM)"
printf '%-10s %10s %10s %7s %16s\n' listing tmpfs-ms fbmm-ms ratio daemon-cpu-ms
for how in "ls -f" "ls" "ls -l"; do
    t=(); f=(); cpu0=$(cpu_ms)
    for _ in $(seq "$REPS"); do
        f+=("$(ms $how "$work/fbmm/big")")
        t+=("$(ms $how "$work/tmpfs/big")")
    done
    cpu=$(( $(cpu_ms) - cpu0 ))
    mt=$(printf '%s\n' "${t[@]}" | median); mf=$(printf '%s\n' "${f[@]}" | median)
    printf '%-10s %10s %10s %7s %16s\n' "$how" "$mt" "$mf" "$(awk -v a="$mf" -v b="$mt" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')" "$(( cpu / REPS ))"
done
[ "$(ls -f "$work/fbmm/big" | wc -l)" = $((N + 2)) ] || { echo "fbmm listed $(ls -f "$work/fbmm/big" | wc -l) entries, not $((N + 2))" >&2; exit 1; }
echo "creating the files: tmpfs $made_t ms, fbmm $made_f ms"
