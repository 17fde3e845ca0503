#!/usr/bin/env bash
# Huge pages and first touch under the shim against native anonymous memory,
# in the same run, on this host's THP settings (Benchmarks/huge/hugebench.c):
#   ask:     a 1 GiB malloc'ed block with madvise(MADV_HUGEPAGE) (JVMs,
#            jemalloc thp:always, PyTorch): huge pages? first touch, random updates
#   down:    the first row touched from its last page to its first
#   plain:   the same without madvise (the host's default for anonymous memory)
#   512M:    first touch of a 512 MiB block, no madvise
#   always:  with ALLOW_SYSFS=1, the host's anonymous THP set to `always` for
#            the run (restored after), no madvise
# The mount is `fbmm mount -o backing=tmpfs` (the default as root; its file memory follows the host's
# anonymous THP setting on the daemon's private tmpfs). Native and fbmm runs
# alternate; each figure is the median of REPS runs.
# Usage: scripts/bench-huge.sh   (root, /dev/fuse; after scripts/build.sh)
# First touch is timed on a fresh block that follows WARM (default 1) freed
# blocks of the same size, so that it measures the kernel's fault path, not
# the hypervisor backing guest memory lazily (Benchmarks/huge/hugebench.c
# says why); the process's first, cold touch is reported beside it. The
# daemon's CPU time during each fbmm run is reported too.
# Knobs: REPS=3 MIB=1024 UPDATES=50000000 WARM=1 ALLOW_SYSFS=0 FBMM=(bench_fbmm)
set -eu -o pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
REPS=${REPS:-3}
MIB=${MIB:-1024}
UPDATES=${UPDATES:-50000000}
WARM=${WARM:-1}
bench_fbmm
work=$(mktemp -d)
mnt=$work/mnt
mkdir -p "$mnt"
thp=/sys/kernel/mm/transparent_hugepage/enabled
old_thp=$(sed -E 's/.*\[([a-z]+)\].*/\1/' "$thp")
cleanup() {
    [ "$(sed -E 's/.*\[([a-z]+)\].*/\1/' "$thp")" = "$old_thp" ] || echo "$old_thp" > "$thp"
    "$FBMM" umount "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -o "$work/hugebench" Benchmarks/huge/hugebench.c
"$FBMM" mount "$mnt" --policy local -o backing=tmpfs >/dev/null
echo "host THP: $old_thp; $("$FBMM" stat "$mnt" | grep '^backing')"

field() { sed -E "s/.*$1 ([0-9.]+).*/\1/"; }
# case NAME MB ASK UPDATES
run_case() {
    local name=$1 mb=$2 ask=$3 updates=$4 order=${5:-up} n=() f=() d=() before
    [ "$updates" -gt 0 ] || updates=1
    for _ in $(seq "$REPS"); do
        n+=("$("$work/hugebench" "$mb" "$ask" "$updates" "$WARM" "$order")")
        before=$(daemon_ms "$FBMM" "$mnt")
        f+=("$("$FBMM" run --mount "$mnt" -- "$work/hugebench" "$mb" "$ask" "$updates" "$WARM" "$order")")
        d+=("$(awk "BEGIN {print $(daemon_ms "$FBMM" "$mnt") - $before}")")
    done
    local nt ft nc fc nu fu nk fk dm
    nt=$(printf '%s\n' "${n[@]}" | field touch_ms | median); ft=$(printf '%s\n' "${f[@]}" | field touch_ms | median)
    nc=$(printf '%s\n' "${n[@]}" | field cold_ms | median);  fc=$(printf '%s\n' "${f[@]}" | field cold_ms | median)
    nu=$(printf '%s\n' "${n[@]}" | field mups | median);     fu=$(printf '%s\n' "${f[@]}" | field mups | median)
    nk=$(printf '%s\n' "${n[@]}" | field pmd_kb | median);   fk=$(printf '%s\n' "${f[@]}" | field pmd_kb | median)
    dm=$(printf '%s\n' "${d[@]}" | median)
    local updated="-"
    [ "$updates" -le 1 ] || updated=$(printf '%.1f / %.1f M/s (**%.2f**)' "$nu" "$fu" "$(awk "BEGIN {print $fu / $nu}")")
    printf '| %s | %s MiB / %s MiB | %.0f ms / %.0f ms (**%.2fx**) | %.0f ms / %.0f ms (%.2fx) | %s | %.0f ms |\n' \
        "$name" $((${nk%.*} / 1024)) $((${fk%.*} / 1024)) "$nt" "$ft" "$(awk "BEGIN {print $ft / $nt}")" \
        "$nc" "$fc" "$(awk "BEGIN {print $fc / $nc}")" "$updated" "$dm"
}
echo "| case | huge pages native / fbmm | first touch native / fbmm (time) | cold first touch (time) | random updates native / fbmm (throughput) | daemon CPU per fbmm run |"
echo "|---|---|---|---|---|---|"
run_case "1 GiB, MADV_HUGEPAGE" "$MIB" 1 "$UPDATES"
run_case "1 GiB, MADV_HUGEPAGE, touched from the end" "$MIB" 1 1 down
run_case "1 GiB, no madvise" "$MIB" 0 "$UPDATES"
run_case "512 MiB, no madvise" 512 0 1
if [ "${ALLOW_SYSFS:-0}" = 1 ]; then
    # A mount follows the host's setting as it is when mounted: mount anew.
    echo always > "$thp"
    "$FBMM" umount "$mnt"
    "$FBMM" mount "$mnt" --policy local -o backing=tmpfs >/dev/null
    run_case "1 GiB, host THP always, no madvise" "$MIB" 0 "$UPDATES"
    echo "$old_thp" > "$thp"
fi
