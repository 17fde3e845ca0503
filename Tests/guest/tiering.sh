#!/usr/bin/env bash
# The tiered policy in the multi-NUMA guest (node 0 fast, node 2 slow):
#
#   scripts/guest/run.sh -- bash Tests/guest/tiering.sh
#
# Two GUPS runs (Tests/guest/gups.c under `fbmm run`): a 128 MiB table, a
# 16 MiB hot set taking 90% of the accesses, fast-capacity=48M. The hot set
# starts at 96 MiB, past what initial placement puts on the fast node (the
# first 47 MiB), so it must be promoted; at MOVE_AT seconds it moves to
# 64 MiB and the policy must follow. The first run only reads (a read-only
# hot set: the tracker `auto` picks must see reads: DAMON on 6.12, refault
# sampling on 6.1); the second does read-modify-write updates, and for its
# phase 2 the script switches the mounted policy to soft-dirty with
# `fbmm set` (knobs while mounted, and the other tracker).
# `fbmm stat --json` is sampled every 3 s: the mount's bytes on the fast node
# must never exceed fast-capacity plus the watermark.
#
# Checks (PASS/FAIL lines, then "N passed, M failed"; exit 1 on any failure):
#   read-promote, read-follow   the read-only run: >= 90% of the hot set on
#               the fast node within READ_LIMIT s (30), of the start / of the move
#   promote     >= 90% of the hot set on the fast node within 60 s
#   follow      >= 90% of the moved hot set on the fast node within 60 s of the move
#   capacity    fast-node bytes <= capacity + watermark in every sample
#   counters    fbmm stat shows promotions, demotions, scans and the tracker names
#   knob        a bad knob value is refused with the daemon's reason, a good one is applied
#   tracker     the mount says which tracker runs and what it cannot see
#   idle-files  IDLE_FILES (3000) small files with data, closed (parked:
#               the daemon holds no descriptor for them): while the policy's
#               passes run, the daemon's descriptor count stays flat (a pass
#               opens one idle file at a time, once while it stays idle)
# Environment: FBMM_BIN, TIERING_GUPS (a prebuilt gups), TIERING_KEEP=1 (keep the work directory).
set -u -o pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fbmm=${FBMM_BIN:-}
if [ -z "$fbmm" ]; then
    for c in debug release; do [ -x "$root/.build/$c/fbmm" ] && { fbmm=$root/.build/$c/fbmm; break; }; done
fi
passed=0 failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
die() { echo "FAIL setup: $*"; echo "$passed passed, $((failed + 1)) failed"; exit 1; }
[ -n "$fbmm" ] && [ -x "$fbmm" ] || die "no fbmm executable (scripts/build.sh, or FBMM_BIN)"
command -v jq >/dev/null || die "jq is needed"
[ -d /sys/devices/system/node/node2 ] || die "needs NUMA nodes 0 and 2 (run inside scripts/guest/run.sh)"

SIZE=${TIERING_SIZE_MIB:-128} HOT=${TIERING_HOT_MIB:-16} CAP_MIB=${TIERING_CAPACITY_MIB:-48}
START_OFF=96 MOVE_OFF=64 MOVE_AT=${TIERING_MOVE_AT:-60} TOTAL=${TIERING_SECONDS:-120}
READ_MOVE_AT=${TIERING_READ_MOVE_AT:-30} READ_TOTAL=${TIERING_READ_SECONDS:-60} READ_LIMIT=${TIERING_READ_LIMIT:-30}
work=$(mktemp -d /tmp/fbmm-tiering.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
    [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
    "$fbmm" umount --force "$mnt" >/dev/null 2>&1
    [ "${TIERING_KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

gups=${TIERING_GUPS:-$work/gups}
[ -x "$gups" ] || cc -O2 -Wall -o "$gups" "$root/Tests/guest/gups.c" || die "cannot build gups.c"
"$fbmm" policies | grep "access trackers" | sed 's/^ */note: /'
"$fbmm" mount "$mnt" --policy tiered -o fast=0,slow=2,fast-capacity=${CAP_MIB}M --log-file "$work/daemon.log" \
    2>"$work/mount.err" || { cat "$work/mount.err"; die "mount failed"; }
if grep -q "fbmm: tiered: access tracker " "$work/mount.err"; then
    pass "tracker: the mount says which tracker runs and what it cannot see: $(cat "$work/mount.err")"
else
    fail "tracker: the mount did not say which tracker runs: $(cat "$work/mount.err")"
fi

# Knobs: a bad value is refused, a good one applied (and restored).
if "$fbmm" set "$mnt" promote-threshold=0 2>"$work/set.err"; then
    fail "knob: promote-threshold=0 was accepted"
elif ! grep -q "option promote-threshold=0: expected" "$work/set.err"; then
    fail "knob: the refusal does not give the daemon's reason: $(cat "$work/set.err")"
elif "$fbmm" set "$mnt" rate-limit=64M && "$fbmm" stat "$mnt" --json | jq -e '.policy | contains("rate-limit=64M")' >/dev/null \
    && "$fbmm" set "$mnt" rate-limit=128M; then
    pass "knob: bad value refused ($(head -c 80 "$work/set.err")...), rate-limit=64M applied"
else
    fail "knob: could not set rate-limit"
fi

# Sample the fast node's bytes while gups runs.
( while :; do "$fbmm" stat "$mnt" --json 2>/dev/null | jq -c '{fast: .nodes["0"].resident_bytes, slow: .nodes["2"].resident_bytes, pc: .policy_counters}' ; sleep 3; done ) > "$work/samples" &
sampler=$!

# first90 OUT PHASE: the first second at which >= 90% of the hot set was fast.
first90() { awk -v p="$2" '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    v["phase"] == p && v["hot_fast"] >= 90 { print v["t"]; exit }' "$1"; }
phase_end() { awk -v p="phase=$2" '$0 ~ p { line = $0 } END { print line }' "$1"; }

# gups_run NAME TOTAL MOVE_AT LIMIT MODE SWITCH: one run and its promote/follow checks.
gups_run() {
    local name=$1 total=$2 move_at=$3 limit=$4 mode=$5 switch=$6 out="$work/gups-$1.out" app status switched=0
    "$fbmm" run --mount "$mnt" --strict -- "$gups" "$SIZE" "$HOT" "$START_OFF" "$total" 0 "$move_at" "$MOVE_OFF" "$mode" > "$out" 2>&1 &
    app=$!
    while kill -0 $app 2>/dev/null; do
        sleep 1
        if [ "$switch" = 1 ] && [ $switched = 0 ] && grep -q "phase=2" "$out"; then
            "$fbmm" set "$mnt" tracker=softdirty || echo "note: could not switch to soft-dirty"
            switched=1
        fi
    done
    wait $app; status=$?
    [ $status = 0 ] && grep -q '^done' "$out" || { cat "$out"; tail -20 "$work/daemon.log"; die "gups ($name) failed ($status)"; }
    echo "--- gups $name (every 5th line)"; awk 'NR % 5 == 0' "$out"
    local t1 t2 since
    t1=$(first90 "$out" 1); t2=$(first90 "$out" 2)
    if [ -n "$t1" ] && awk -v t="$t1" -v l="$limit" 'BEGIN { exit !(t <= l) }'; then
        pass "${name}promote: 90% of the hot set on the fast node at t=${t1}s (end of phase 1: $(phase_end "$out" 1))"
    else
        fail "${name}promote: hot set never reached 90% fast within $limit s (end of phase 1: $(phase_end "$out" 1))"
    fi
    if [ -n "$t2" ]; then
        since=$(awk -v t="$t2" -v m="$move_at" 'BEGIN { printf "%.1f", t - m }')
        if awk -v s="$since" -v l="$limit" 'BEGIN { exit !(s <= l) }'; then
            pass "${name}follow: moved hot set 90% fast ${since}s after the move (end: $(phase_end "$out" 2))"
        else
            fail "${name}follow: took ${since}s after the move"
        fi
    else
        fail "${name}follow: moved hot set never reached 90% fast (end: $(phase_end "$out" 2))"
    fi
}

gups_run read- "$READ_TOTAL" "$READ_MOVE_AT" "$READ_LIMIT" read 0
gups_run "" "$TOTAL" "$MOVE_AT" 60 rmw 1
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null; sampler=
final=$("$fbmm" stat "$mnt" --json)

cap=$((CAP_MIB * 1048576))
wm=$(echo "$final" | jq '.policy_counters.watermark_bytes')
maxfast=$(jq -s 'map(.fast // 0) | max' "$work/samples")
nsamples=$(wc -l < "$work/samples")
if [ "$nsamples" -ge 10 ] && [ "$maxfast" -le $((cap + wm)) ]; then
    pass "capacity: fast node at most $((maxfast / 1048576)) MiB of ${CAP_MIB} MiB (+$((wm / 1024)) KiB watermark) over $nsamples samples"
else
    fail "capacity: fast node reached $maxfast bytes (limit $((cap + wm))) over $nsamples samples"
fi

pc=$(echo "$final" | jq -c '.policy_counters')
trackers=$(jq -r '.pc.tracker // empty' "$work/samples" | sort -u | tr '\n' ' ')
if echo "$pc" | jq -e '.promoted_pages > 0 and .demoted_pages > 0 and .scans > 10 and .tracker_cpu_seconds > 0' >/dev/null; then
    pass "counters: $(echo "$pc" | jq -r '"promoted \(.promoted_bytes / 1048576 | floor) MiB, demoted \(.demoted_bytes / 1048576 | floor) MiB, \(.scans) scans, tracker CPU \(.tracker_cpu_seconds * 1000 | floor) ms (\(.tracker_cpu_per_gib_second * 1000 | floor) ms per GiB-second)"'); trackers seen: $trackers"
else
    fail "counters: $pc"
fi
# Idle files: a pass must not hold a descriptor per file.
IDLE_FILES=${TIERING_IDLE_FILES:-3000}
dpid=$(echo "$final" | jq -r '.daemon_pid')
fds() { ls "/proc/$dpid/fd" | wc -l; }
mkdir "$mnt/idle"
page=$(printf '%4096s' "idle page")
for i in $(seq "$IDLE_FILES"); do printf '%s' "$page" > "$mnt/idle/$i"; done  # no process per file
before=$(fds) most=0 scans0=$("$fbmm" stat "$mnt" --json | jq '.policy_counters.scans')
end=$(( $(date +%s) + 5 ))
while [ "$(date +%s)" -lt "$end" ]; do n=$(fds); [ "$n" -gt "$most" ] && most=$n; sleep 0.05; done
scans=$(( $("$fbmm" stat "$mnt" --json | jq '.policy_counters.scans') - scans0 ))
if [ "$scans" -ge 2 ] && [ $((most - before)) -lt 100 ] && [ "$(cat "$mnt/idle/$IDLE_FILES")" = "$page" ]; then
    pass "idle-files: $IDLE_FILES files with data, $scans passes: daemon descriptors $before before, at most $most during"
else
    fail "idle-files: $IDLE_FILES files, $scans passes: daemon descriptors $before before, $most during"
fi

echo "--- last stat samples"; tail -3 "$work/samples"
grep -iE "error|refused" "$work/daemon.log" | tail -5
echo "$passed passed, $failed failed"
[ $failed = 0 ]
