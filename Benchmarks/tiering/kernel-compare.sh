#!/usr/bin/env bash
# fbmm's tiered policy side by side with the kernel's own tiering, in the
# 3-node guest (node 0: the CPUs, "fast"; node 2: CPU-less, "slow"):
#
#   scripts/guest/run.sh -- bash Benchmarks/tiering/kernel-compare.sh     # Debian's 6.12
#
# One workload for all: gups (Tests/guest/gups.c), a 128 MiB table whose
# 16 MiB hot set at 96 MiB takes 90% of the read-modify-write updates, for
# SECONDS (60). Each contender starts with the hot set on the slow node:
#   fbmm       `fbmm run` on a tiered mount, fast=0,slow=2,fast-capacity=48M
#              (its placement puts the table's first 47 MiB on node 0, the
#              hot set on node 2); tracker as `auto` picks
#   numab      the program natively, its table moved to node 2 with
#              migratepages once written, then kernel.numa_balancing=1
#              (NUMA balancing: pages move to the node of the CPU using them)
#   numab-tier the same with kernel.numa_balancing=2 (its memory tiering
#              mode, the TPP work) and demotion_enabled=1
#   damon      the same with a DAMON paddr kdamond over nodes 0 and 2 and two
#              schemes: migrate_hot to node 0 (regions used in most samples)
#              and migrate_cold to node 2 (regions unused for 5 s)
# Reported per contender: the hot set's share on node 0 at 5/10/20/40 s and
# at the end, the first second it reached 90%, node 0's most bytes of the
# table, pages migrated (fbmm: its counters; kernel: /proc/vmstat
# numa_pages_migrated, pgpromote_success, pgdemote_*, and DAMON's scheme
# statistics), and the CPU the mechanism spent (fbmm: tracker CPU; DAMON:
# its kdamond thread; NUMA balancing: the hinting faults it took, whose cost
# the program pays).
# The guest's nodes are emulated memory of the same speed: this compares
# placement, not throughput.
set -u -o pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fbmm=${FBMM_BIN:-$root/.build/debug/fbmm}
SECONDS_RUN=${SECONDS_RUN:-60}
SIZE=128 HOT=16 HOT_OFF=96 CAP=48
work=$(mktemp -d /tmp/fbmm-kcompare.XXXXXX)
mnt=$work/mnt
cleanup() {
    "$fbmm" umount --force "$mnt" >/dev/null 2>&1
    echo 0 > /proc/sys/kernel/numa_balancing 2>/dev/null
    echo 0 > /sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
[ -d /sys/devices/system/node/node2 ] || { echo "needs NUMA nodes 0 and 2 (run inside scripts/guest/run.sh)"; exit 1; }
cc -O2 -o "$work/gups" "$root/Tests/guest/gups.c" || exit 1
gups=$work/gups

vmstat() { awk -v k="$1" '$1 == k { print $2 }' /proc/vmstat; }
# node0_table PID: bytes of the program's memory on node 0 (numa_maps N0=).
node0_bytes() { awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^N0=/) { sub("N0=", "", $i); s += $i } } END { print s * 4096 + 0 }' "/proc/$1/numa_maps" 2>/dev/null || echo 0; }

# summarize NAME OUT MAXFAST MIGRATED CPU T0: one table row from gups output
# (times counted from gups's second T0, when the hot set was all slow).
summarize() {
    local name=$1 out=$2 maxfast=$3 migrated=$4 cpu=$5 t0=$6
    awk -v name="$name" -v maxfast="$maxfast" -v migrated="$migrated" -v cpu="$cpu" -v t0="$t0" '
        /^t=/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                t = v["t"] - t0; if (t <= 0) next
                h = v["hot_fast"]; last = h
                for (k = 1; k <= 4; k++) if (!(k in at) && t >= mark[k]) at[k] = h
                if (first90 == "" && h >= 90) first90 = sprintf("%.0f s", t) }
        BEGIN { mark[1] = 5; mark[2] = 10; mark[3] = 20; mark[4] = 40; first90 = "" }
        END { printf "| %s | %s%% | %s%% | %s%% | %s%% | %s%% | %s | %d MiB | %s | %s |\n", name,
                  at[1] + 0, at[2] + 0, at[3] + 0, at[4] + 0, last + 0, first90 == "" ? "never" : first90,
                  maxfast / 1048576, migrated, cpu }' "$out"
}

# Watches node 0's share of PID's memory every second into FILE.
watch_fast() { ( while kill -0 "$1" 2>/dev/null; do node0_bytes "$1"; sleep 1; done ) > "$2" & }

rows=()

# --- fbmm tiered ---------------------------------------------------------
mkdir -p "$mnt"
"$fbmm" mount "$mnt" --policy tiered -o fast=0,slow=2,fast-capacity=${CAP}M --log-file "$work/daemon.log" 2>"$work/mount.err" \
    || { cat "$work/mount.err"; exit 1; }
"$fbmm" run --mount "$mnt" --strict -- "$gups" $SIZE $HOT $HOT_OFF "$SECONDS_RUN" 0 > "$work/fbmm.out" 2>&1 &
app=$!
maxfast=0
while kill -0 $app 2>/dev/null; do
    f=$("$fbmm" stat "$mnt" --json 2>/dev/null | jq '.nodes["0"].resident_bytes // 0')
    [ "${f:-0}" -gt "$maxfast" ] && maxfast=$f
    sleep 1
done
wait $app
pc=$("$fbmm" stat "$mnt" --json | jq -c '.policy_counters')
migrated=$(echo "$pc" | jq -r '"\(.promoted_pages) promoted, \(.demoted_pages) demoted"')
cpu=$(echo "$pc" | jq -r '"tracker \(.tracker) \(.tracker_cpu_seconds * 1000 | floor) ms"')
"$fbmm" umount "$mnt" >/dev/null 2>&1 || "$fbmm" umount --force "$mnt" >/dev/null 2>&1
rows+=("$(summarize "fbmm tiered (fast-capacity 48M)" "$work/fbmm.out" "$maxfast" "$migrated" "$cpu" 0)")

# --- the kernel's own: the table starts on node 2 -------------------------
# native_run NAME SETUP: gups natively, its table moved to node 2 once written,
# then SETUP (a function) turns the kernel mechanism on.
native_run() {
    local name=$1 setup=$2 out="$work/$2.out"
    local m0 p0 d0 h0
    echo 0 > /proc/sys/kernel/numa_balancing
    "$gups" $SIZE $HOT $HOT_OFF "$SECONDS_RUN" 0 > "$out" 2>&1 &
    app=$!
    # Written once the first line is out; then everything goes to node 2.
    for _ in $(seq 100); do grep -q '^t=' "$out" && break; sleep 0.1; done
    migratepages $app 0 2 >/dev/null 2>&1
    t0=$(awk -F'[= ]' '/^t=/ { t = $2 } END { print t + 0 }' "$out")
    m0=$(vmstat numa_pages_migrated); p0=$(vmstat pgpromote_success); h0=$(vmstat numa_hint_faults)
    d0=$(( $(vmstat pgdemote_kswapd) + $(vmstat pgdemote_direct) + $(vmstat pgdemote_khugepaged 2>/dev/null || echo 0) ))
    $setup start
    maxfast=0
    while kill -0 $app 2>/dev/null; do
        f=$(node0_bytes $app)
        [ "${f:-0}" -gt "$maxfast" ] && maxfast=$f
        sleep 1
    done
    wait $app
    local cpu applied=""
    cpu=$($setup cpu)
    [ "$setup" = damon_setup ] && applied=$(damon_setup applied)
    $setup stop
    local m p h d
    m=$(( $(vmstat numa_pages_migrated) - m0 )); p=$(( $(vmstat pgpromote_success) - p0 )); h=$(( $(vmstat numa_hint_faults) - h0 ))
    d=$(( $(vmstat pgdemote_kswapd) + $(vmstat pgdemote_direct) + $(vmstat pgdemote_khugepaged 2>/dev/null || echo 0) - d0 ))
    local migrated="$m migrated ($p promoted, $d demoted)"
    [ -n "$applied" ] && migrated=$applied
    [ -z "$cpu" ] && cpu="$h hinting faults (the program's)"
    rows+=("$(summarize "$name" "$out" "$maxfast" "$migrated" "$cpu" "$t0")")
}

numab_setup() { case $1 in start) echo 1 > /proc/sys/kernel/numa_balancing ;; stop) echo 0 > /proc/sys/kernel/numa_balancing ;; cpu) ;; esac; }
numab_tier_setup() {
    case $1 in
        start) echo 1 > /sys/kernel/mm/numa/demotion_enabled 2>/dev/null; echo 2 > /proc/sys/kernel/numa_balancing ;;
        stop) echo 0 > /proc/sys/kernel/numa_balancing; echo 0 > /sys/kernel/mm/numa/demotion_enabled 2>/dev/null ;;
        cpu) ;;
    esac
}

# DAMON: one paddr context over node 0's and node 2's physical memory.
damon=/sys/kernel/mm/damon/admin/kdamonds
node_range() {  # node_range N: "start end" of node N's memory blocks
    local bs; bs=$((16#$(cat /sys/devices/system/memory/block_size_bytes)))
    ls -d /sys/devices/system/node/node$1/memory[0-9]* | sed 's/.*memory//' | sort -n | awk -v bs="$bs" 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f %.0f\n", lo * bs, (hi + 1) * bs }'
}
damon_scheme() {  # damon_scheme I ACTION NID NRMIN NRMAX AGEMIN
    local s=$damon/0/contexts/0/schemes/$1
    echo "$2" > $s/action
    echo "$3" > $s/target_nid
    echo "$4" > $s/access_pattern/nr_accesses/min; echo "$5" > $s/access_pattern/nr_accesses/max
    echo "$6" > $s/access_pattern/age/min; echo 4294967295 > $s/access_pattern/age/max
    echo 4096 > $s/access_pattern/sz/min; echo 18446744073709551615 > $s/access_pattern/sz/max
}
damon_setup() {
    case $1 in
        start)
            echo 1 > $damon/nr_kdamonds
            echo 1 > $damon/0/contexts/nr_contexts
            echo paddr > $damon/0/contexts/0/operations
            echo 1 > $damon/0/contexts/0/targets/nr_targets
            echo 2 > $damon/0/contexts/0/targets/0/regions/nr_regions
            local r0 r2; r0=($(node_range 0)); r2=($(node_range 2))
            echo ${r0[0]} > $damon/0/contexts/0/targets/0/regions/0/start; echo ${r0[1]} > $damon/0/contexts/0/targets/0/regions/0/end
            echo ${r2[0]} > $damon/0/contexts/0/targets/0/regions/1/start; echo ${r2[1]} > $damon/0/contexts/0/targets/0/regions/1/end
            echo 2 > $damon/0/contexts/0/schemes/nr_schemes
            # Aggregation 100 ms of 5 ms samples (DAMON's defaults): max nr_accesses 20.
            damon_scheme 0 migrate_hot 0 10 20 0        # used in half the samples or more
            damon_scheme 1 migrate_cold 2 0 0 50        # unused for 50 aggregations (5 s)
            echo on > $damon/0/state
            ;;
        cpu)
            local pid; pid=$(cat $damon/0/pid 2>/dev/null)
            [ -n "$pid" ] && [ "$pid" != -1 ] && awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "kdamond %d ms\n", ($12 + $13) * 1000 / hz }' /proc/$pid/stat
            ;;
        applied)
            echo update_schemes_stats > $damon/0/state
            local h c
            h=$(( $(cat $damon/0/contexts/0/schemes/0/stats/sz_applied) / 4096 ))
            c=$(( $(cat $damon/0/contexts/0/schemes/1/stats/sz_applied) / 4096 ))
            echo "$h promoted, $c demoted (pages, DAMOS sz_applied)"
            ;;
        stop) echo off > $damon/0/state 2>/dev/null; echo 0 > $damon/nr_kdamonds ;;
    esac
}

command -v migratepages >/dev/null || { echo "migratepages is needed (apt install numactl)"; exit 1; }
native_run "NUMA balancing (numa_balancing=1)" numab_setup
tiers=$(ls -d /sys/devices/virtual/memory_tiering/memory_tier* 2>/dev/null | wc -l)
native_run "NUMA balancing tiering mode (=2; $tiers memory tier(s))" numab_tier_setup
if [ -w $damon/nr_kdamonds ] && [ "$(cat $damon/nr_kdamonds)" = 0 ]; then
    native_run "DAMON migrate_hot/migrate_cold (paddr)" damon_setup
else
    rows+=("| DAMON migrate_hot/migrate_cold | - | - | - | - | - | not available on $(uname -r) | - | - | - |")
fi

echo "kernel $(uname -r); gups ${SIZE} MiB, ${HOT} MiB hot set at ${HOT_OFF} MiB, ${SECONDS_RUN} s; hot set on node 0 over time:"
echo "| contender | 5 s | 10 s | 20 s | 40 s | end | 90% at | node 0 at most | pages migrated | mechanism CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
