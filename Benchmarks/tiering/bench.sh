#!/usr/bin/env bash
# Access-tracker accuracy and cost: recall and precision of a known hot set,
# and tracker CPU per GiB tracked per second, for soft-dirty and DAMON.
#
#   scripts/guest/run.sh -- bash Benchmarks/tiering/bench.sh     # 6.12 guest: both trackers
#   bash Benchmarks/tiering/bench.sh                             # here: what the kernel offers
#
# hotset.c maps a 256 MiB memfd and does GUPS-style updates, 90% in a 32 MiB
# hot set ("write": read-modify-write; "read": loads only). `fbmm track`
# runs the tracker on it for SCANS one-second scans; a page counts as hot when
# hot in 2 scans in a row (the tiered policy's default promote-threshold).
# Recall = hot-set pages reported / hot-set pages; precision = hot-set pages
# reported / pages reported (last scan). Cost = tracker CPU seconds (daemon
# thread + kdamond) / (GiB tracked x seconds).
set -u -o pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fbmm=${FBMM_BIN:-$root/.build/debug/fbmm}
SCANS=${SCANS:-8}
work=$(mktemp -d /tmp/fbmm-trackbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cc -O2 -o "$work/hotset" "$root/Benchmarks/tiering/hotset.c" || exit 1
trackers=$("$fbmm" policies | sed -n 's/.*access trackers on this kernel: \([^(]*\) (.*/\1/p' | tr -d ',')
printf "%-10s %-6s %8s %10s %12s %14s\n" tracker mode recall precision cpu_ms/scan ms/GiB/s
for tracker in $trackers; do
    [ "$tracker" = none ] && continue
    for mode in write read; do
        "$work/hotset" 256 32 128 $((SCANS * 4 + 10)) $mode > "$work/hs.out" &
        app=$!
        for _ in $(seq 50); do grep -q pid= "$work/hs.out" && break; sleep 0.1; done
        hot=$(sed -n 's/.*hot=\([0-9]*-[0-9]*\).*/\1/p' "$work/hs.out")
        "$fbmm" track --pid $app --tracker "$tracker" --scans "$SCANS" --interval 1 --threshold 2 > "$work/track.out"
        kill $app 2>/dev/null; wait $app 2>/dev/null
        tail -1 "$work/track.out" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read()); lo, hi = map(int, sys.argv[1].split("-"))
runs = [r for v in d["hot_ranges"].values() for r in v]
reported = sum(b - a for a, b in runs)
inter = sum(max(0, min(b, hi) - max(a, lo)) for a, b in runs)
gib_s = d["tracked_bytes"] / 2**30 * d["elapsed_seconds"]
print("%-10s %-6s %7.1f%% %9.1f%% %12.1f %14.1f" % (sys.argv[2], sys.argv[3], 100 * inter / (hi - lo),
      100 * inter / reported if reported else 0, 1000 * d["cpu_seconds"] / (d["scan"] + 1), 1000 * d["cpu_seconds"] / gib_s))
' "$hot" "$tracker" "$mode"
    done
done
