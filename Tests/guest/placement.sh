#!/usr/bin/env bash
# Placement of every built-in policy, checked page by page, inside the
# multi-NUMA guest (over 400 lines: every check runs in one guest boot,
# which costs minutes under TCG):
#
#   scripts/guest/run.sh --topology "1G,cpus=0-1 256M 1G" -- bash Tests/guest/placement.sh
#
# Needs three memory nodes (0, 1, 2). A small node 1 keeps the preferred
# overflow check cheap (it allocates node 1's free memory plus 64 MiB); 1G
# nodes work too, only slower.
#
# For each check, placement_app (run under the shim with `fbmm run --strict`)
# allocates and touches memory and reports the node of every page with
# move_pages(nodes=NULL); the script compares that with the expectation and
# with `fbmm stat --json` (per-file node bytes) while the app still holds the
# memory. One line per check: `PASS name: ...` or `FAIL name: ...`, then
# `N passed, M failed`. Exit status 0 when every check passed, 1 otherwise.
#
# Environment:
#   FBMM_BIN             fbmm executable (default: .build/debug/fbmm, then release)
#   PLACEMENT_APP        a prebuilt placement_app (default: built here into /tmp with cc)
#   POOLCHECK_APP        a prebuilt Tests/shim/poolcheck (default: built here with cc)
#   PLACEMENT_TOLERANCE  percentage points allowed between measured and expected
#                        shares, and between the app's and fbmm stat's counts (default 3)
#   PLACEMENT_KEEP=1     leave the work directory (daemon logs) in the guest's /tmp
# Needs jq (and setfattr/getfattr from the attr package) on the host, whose
# filesystem the guest sees.
set -u -o pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tol=${PLACEMENT_TOLERANCE:-3}
page=$(getconf PAGESIZE)
MiB=1048576

fbmm=${FBMM_BIN:-}
if [ -z "$fbmm" ]; then
    for c in debug release; do
        [ -x "$root/.build/$c/fbmm" ] && { fbmm=$root/.build/$c/fbmm; break; }
    done
fi
die() { echo "FAIL setup: $*"; echo "0 passed, 1 failed"; exit 1; }
[ -n "$fbmm" ] && [ -x "$fbmm" ] || die "no fbmm executable (build with scripts/build.sh, or set FBMM_BIN)"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
command -v setfattr >/dev/null && command -v getfattr >/dev/null || die "setfattr/getfattr are needed (apt-get install attr)"
for n in 0 1 2; do
    [ -r /sys/devices/system/node/node$n/meminfo ] || die "node $n missing: run in the 3-node guest (scripts/guest/run.sh -- bash $0)"
done

work=$(mktemp -d /tmp/fbmm-placement.XXXXXX) || die "mktemp failed"
# Run private copies of fbmm and its shim from the guest's RAM: the host's files
# come over 9p without caching (slow at every exec), and a build on the host
# that relinks .build/debug/fbmm while the guest runs it makes it crash.
shim=$(dirname "$fbmm")/libfbmm-shim.so
[ -r "$shim" ] || die "no libfbmm-shim.so next to $fbmm (scripts/build.sh puts it there)"
mkdir -p "$work/bin" && cp "$fbmm" "$shim" "$work/bin/" || die "cannot copy fbmm to $work/bin"
fbmm_src=$fbmm fbmm=$work/bin/fbmm
app=${PLACEMENT_APP:-}
if [ -z "$app" ]; then
    app=$work/placement_app
    cc -O2 -Wall -pthread -o "$app" "$root/Tests/guest/placement_app.c" || die "cannot build placement_app"
fi
[ -x "$app" ] || die "placement_app '$app' is not executable"

passed=0 failed=0
mounts=()
# Each line says how long the check took (guest seconds, since the previous line).
t_last=$SECONDS
pass() { echo "PASS $1: $2 [$((SECONDS - t_last))s]"; t_last=$SECONDS; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2 [$((SECONDS - t_last))s]"; t_last=$SECONDS; failed=$((failed + 1)); }

cleanup() {
    app_quit 2>/dev/null
    for m in "${mounts[@]}"; do
        mountpoint -q "$m" && { "$fbmm" umount "$m" 2>/dev/null || "$fbmm" umount --force "$m" 2>/dev/null; }
    done
    [ "${PLACEMENT_KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

# mount_fs NAME POLICY [OPTIONS]: mounts $work/NAME; sets $mnt. Returns 1 (after a FAIL line) on error.
mount_fs() {
    mnt=$work/$1
    mkdir -p "$mnt"
    local args=("$fbmm" mount "$mnt" --policy "$2" --log-file "$work/$1.log")
    # The policy checks compare the app's buffers with the whole arena file, so
    # they run without the pre-zeroed pool (its pages are checked on their own below).
    local opts=${3:-}
    [[ $opts == *prezero=* ]] || opts=${opts:+$opts,}prezero=0
    args+=(-o "$opts")
    local err
    if ! err=$("${args[@]}" 2>&1); then
        fail "$1" "fbmm mount --policy $2 ${3:+-o $3} failed: $err; daemon log: $(tail -c 800 "$work/$1.log" 2>/dev/null | tr '\n' ' ')"
        return 1
    fi
    mounts+=("$mnt")
}
umount_fs() { "$fbmm" umount "$1" >/dev/null 2>&1 || "$fbmm" umount --force "$1" >/dev/null 2>&1; }

# ---- the app, as a coprocess --------------------------------------------------
app_pid=""
# app_start MOUNT: runs placement_app under the shim (strict: no fallback to anonymous memory).
app_start() {
    : >"$work/app.err"
    coproc APP { exec "$fbmm" run --strict --mount "$1" -- "$app" 2>>"$work/app.err"; }
    app_pid=$APP_PID
    app_in=${APP[1]} app_out=${APP[0]}
    arena=""
}
# app_arena: sets $arena, the app's file in the mount (the shim creates it at the first allocation).
app_arena() {
    local saved=$reply
    app_cmd info || return 1
    arena=$(jq -r '.files[0] // empty' <<<"$reply")
    [ -n "$arena" ] || { reply="no file of the mount open in the app: $reply"; return 1; }
    reply=$saved
}
# app_cmd WORDS...: one command, one reply line in $reply. Returns 1 on no reply or an error reply.
app_cmd() {
    reply=""
    [ -n "$app_pid" ] || { reply="app not running"; return 1; }
    if ! echo "$*" >&"$app_in" 2>/dev/null || ! IFS= read -r -t 600 reply <&"$app_out"; then
        reply="app gave no answer to '$*' (died? stderr: $(tail -c 500 "$work/app.err" 2>/dev/null | tr '\n' ' '))"
        return 1
    fi
    if [ "$(jq -r '.error // empty' <<<"$reply")" != "" ]; then return 1; fi
    return 0
}
app_quit() {
    [ -n "$app_pid" ] || return 0
    echo quit >&"$app_in" 2>/dev/null
    wait "$app_pid" 2>/dev/null
    app_pid=""
}

# ---- comparisons ------------------------------------------------------------------
# "node:pages ..." of a reply, and "node:bytes ..." of one file in fbmm stat.
reply_nodes() { jq -r '.nodes | to_entries | map("\(.key):\(.value)") | join(" ")' <<<"$1"; }
stat_file_nodes() {   # MOUNT PATH-IN-MOUNT (e.g. /placement_app.12.0)
    local json
    json=$("$fbmm" stat "$1" --json 2>&1) || { echo "ERROR fbmm stat failed: $json"; return 1; }
    jq -r --arg p "$2" '[.files[] | select(.path == $p)][0] // empty | .nodes | to_entries | map("\(.key):\(.value)") | join(" ")' <<<"$json"
}

# verdict EXPECT APPNODES [STATNODES]: EXPECT is "node=percent ...", APPNODES
# "node:pages ...", STATNODES "node:bytes ..." (or "-" to skip). Prints
# "ok DETAILS" or "bad DETAILS".
verdict() {
    awk -v expect="$1" -v appn="$2" -v statn="${3:--}" -v tol="$tol" -v page="$page" '
    function pct(x, t) { return t > 0 ? 100.0 * x / t : 0 }
    function show(arr, t,   s, i) {
        s = ""
        for (i = 0; i < 64; i++) if (arr[i] > 0) s = s sprintf("%snode%d=%.1f%%", s == "" ? "" : " ", i, pct(arr[i], t))
        return s == "" ? "none" : s
    }
    BEGIN {
        ok = 1; why = ""
        n = split(expect, e, " "); for (i = 1; i <= n; i++) { split(e[i], kv, "="); want[kv[1]] = kv[2]; nodes[kv[1]] = 1 }
        n = split(appn, a, " "); total = 0
        for (i = 1; i <= n; i++) { split(a[i], kv, ":"); got[kv[1]] = kv[2] * page; total += kv[2] * page; nodes[kv[1]] = 1 }
        if (total == 0) { ok = 0; why = why " no resident pages;" }
        dostat = statn != "-"
        if (dostat) {
            n = split(statn, s, " "); stotal = 0
            for (i = 1; i <= n; i++) { split(s[i], kv, ":"); st[kv[1]] = kv[2]; stotal += kv[2]; nodes[kv[1]] = 1 }
        }
        for (k in nodes) {
            p = pct(got[k] + 0, total); w = want[k] + 0
            if (p - w > tol || w - p > tol) { ok = 0; why = why sprintf(" node%s %.1f%% (want %s%%);", k, p, w) }
            if (dostat) {
                d = pct(st[k] + 0, total) - p
                if (d > tol || -d > tol) { ok = 0; why = why sprintf(" stat node%s %.1f%% vs app %.1f%%;", k, pct(st[k] + 0, total), p) }
            }
        }
        detail = sprintf("app %s of %d MiB", show(got, total), total / 1048576)
        if (dostat) detail = detail sprintf("; fbmm stat %s of %d MiB", show(st, stotal), stotal / 1048576)
        printf "%s %s%s\n", ok ? "ok" : "bad", detail, ok ? "" : " —" why
    }'
}

# reply_ok: the reply is a success with every page present and the pattern intact.
reply_ok() {
    jq -e '(.error == null) and (.absent == 0) and (.intact == true)' <<<"$1" >/dev/null
}
in_mount() {   # the buffer of a reply is mapped from an fbmm file (not a fallback)
    jq -e '.mapped | test("^/memfd:|^/fbmm-backing\\.")' <<<"$1" >/dev/null
}

# judge NAME EXPECT REPLY STATNODES: one PASS/FAIL line.
judge() {
    local name=$1 expect=$2 r=$3 statnodes=$4 v
    if ! reply_ok "$r"; then fail "$name" "bad app reply: $r"; return 1; fi
    if [[ $statnodes == ERROR* ]]; then fail "$name" "${statnodes#ERROR }"; return 1; fi
    [ -n "$statnodes" ] || statnodes="none:0"
    v=$(verdict "$expect" "$(reply_nodes "$r")" "$statnodes")
    if [[ $v == ok* ]]; then pass "$name" "${v#ok }"; else fail "$name" "${v#bad }"; return 1; fi
}

# simple_check NAME MOUNT EXPECT SIZE_MIB [KIND]: one app, one buffer, judged against
# the expectation and fbmm stat.
simple_check() {
    local name=$1 m=$2 expect=$3 size=$4 kind=${5:-malloc}
    if ! app_start "$m"; then fail "$name" "app: $reply"; app_quit; return 1; fi
    if ! app_cmd alloc "$size" "$kind"; then fail "$name" "alloc $size MiB: $reply"; app_quit; return 1; fi
    local r=$reply
    if ! in_mount "$r"; then fail "$name" "buffer not in the mount: $r"; app_quit; return 1; fi
    if ! app_arena; then fail "$name" "$reply"; app_quit; return 1; fi
    judge "$name" "$expect" "$r" "$(stat_file_nodes "$m" "/${arena##*/}")"
    app_quit
}

free_mib() { awk '/MemFree/ { printf "%d", $4 / 1024 }' "/sys/devices/system/node/node$1/meminfo"; }

echo "placement checks: fbmm $fbmm_src (run from a copy), app $app, tolerance ${tol} points, node MemFree: 0=$(free_mib 0)M 1=$(free_mib 1)M 2=$(free_mib 2)M" >&2

# ---- bind, to each node (a malloc'd buffer and an anonymous mmap) ----------------------
for n in 0 1 2; do
    mount_fs "bind$n" bind "nodes=$n" || continue
    simple_check "bind-node$n-malloc" "$mnt" "$n=100" 32 malloc
    simple_check "bind-node$n-mmap" "$mnt" "$n=100" 16 mmap
    umount_fs "$mnt"
done

# ---- preferred, then its overflow when the preferred node is full ---------------------
if mount_fs preferred preferred nodes=1; then
    simple_check preferred-node1 "$mnt" "1=100" 32
    if app_start "$mnt"; then
        free1=$(free_mib 1)
        size=$((free1 + 64))
        if app_cmd alloc "$size" && app_arena; then
            r=$reply
            statnodes=$(stat_file_nodes "$mnt" "/${arena##*/}")
            # Node 1 takes what it had free (less the kernel's watermarks); the rest
            # spills to the other nodes, and the app is not killed.
            on1=$(jq -r '.nodes["1"] // 0' <<<"$r")
            total=$(jq -r .pages <<<"$r")
            spill=$((total - on1))
            share1=$(awk -v a="$on1" -v t="$total" 'BEGIN { printf "%.1f", 100 * a / t }')
            want1=$(awk -v f="$free1" -v s="$size" -v t="$tol" 'BEGIN { printf "%.1f", 100 * f / s - 4 * t }')
            if ! reply_ok "$r"; then fail preferred-overflow "bad app reply: $r"
            elif [ "$((spill * page / MiB))" -lt 56 ]; then fail preferred-overflow "only $((spill * page / MiB)) MiB of $size MiB spilled off node 1 (node 1 had ${free1} MiB free): $(reply_nodes "$r")"
            elif awk -v a="$share1" -v w="$want1" 'BEGIN { exit !(a < w) }'; then fail preferred-overflow "node 1 holds only $share1% of $size MiB (it had ${free1} MiB free; want >= $want1%)"
            else
                # Against fbmm stat: the expectation is what the app measured.
                expect=$(jq -r --argjson t "$total" '.nodes | to_entries | map("\(.key)=\(100 * .value / $t)") | join(" ")' <<<"$r")
                judge preferred-overflow "$expect" "$r" "$statnodes"
            fi
        else
            fail preferred-overflow "alloc $size MiB (node 1 free ${free1} MiB): $reply"
        fi
    else
        fail preferred-overflow "app: $reply"
    fi
    app_quit
    umount_fs "$mnt"
fi

# ---- interleave: over 2 and 3 nodes, and weighted 3:1 ----------------------------------
if mount_fs interleave2 interleave nodes=1:2; then
    simple_check interleave-2nodes "$mnt" "1=50 2=50" 64
    umount_fs "$mnt"
fi
if mount_fs interleave3 interleave nodes=0:1:2; then
    simple_check interleave-3nodes "$mnt" "0=33.333 1=33.333 2=33.333" 96
    umount_fs "$mnt"
fi
if mount_fs weighted interleave nodes=0:2,weights=3:1; then
    simple_check weighted-interleave-3to1 "$mnt" "0=75 2=25" 64
    umount_fs "$mnt"
fi

# ---- per-file policy override: user.fbmm.policy on a directory, a file, the root -------
# getfattr user.fbmm.nodes gives "node:bytes ..."; check it against fbmm stat too.
xattr_file_check() {   # NAME MOUNT PATH-IN-MOUNT EXPECTED-NODE SIZE_MIB
    local name=$1 m=$2 rel=$3 node=$4 size=$5 nodes statnodes v
    nodes=$(getfattr --absolute-names --only-values -n user.fbmm.nodes "$m$rel" 2>&1) || { fail "$name" "getfattr user.fbmm.nodes: $nodes"; return 1; }
    statnodes=$(stat_file_nodes "$m" "$rel")
    [[ $statnodes == ERROR* ]] && { fail "$name" "${statnodes#ERROR }"; return 1; }
    # user.fbmm.nodes is in bytes: turn it into pages for verdict.
    local pages
    pages=$(awk -v p="$page" '{ for (i = 1; i <= NF; i++) { split($i, kv, ":"); printf "%s%s:%d", (i > 1 ? " " : ""), kv[1], kv[2] / p } }' <<<"$nodes")
    v=$(verdict "$node=100" "$pages" "${statnodes:-none:0}")
    local size_ok=1 total
    total=$(awk '{ t = 0; for (i = 1; i <= NF; i++) { split($i, kv, ":"); t += kv[2] } print t }' <<<"$nodes")
    [ "$total" -eq $((size * MiB)) ] || size_ok=0
    if [[ $v == ok* ]] && [ $size_ok = 1 ]; then pass "$name" "user.fbmm.nodes '$nodes'; ${v#ok }"
    else fail "$name" "user.fbmm.nodes '$nodes' (want $size MiB on node $node); ${v#* }"; fi
}
if mount_fs xattr bind nodes=0; then
    m=$mnt
    # A directory's override is inherited by the files created in it.
    mkdir "$m/on2"
    if out=$(setfattr -n user.fbmm.policy -v bind,nodes=2 "$m/on2" 2>&1) &&
        out=$(dd if=/dev/zero of="$m/on2/file" bs=1M count=16 2>&1); then
        xattr_file_check xattr-directory-bind2 "$m" /on2/file 2 16
        pol=$(getfattr --absolute-names --only-values -n user.fbmm.policy "$m/on2/file" 2>&1)
        [ "$pol" = "bind,nodes=2" ] && pass xattr-directory-inherited "user.fbmm.policy of on2/file is '$pol'" ||
            fail xattr-directory-inherited "user.fbmm.policy of on2/file is '$pol', want 'bind,nodes=2'"
    else
        fail xattr-directory-bind2 "setfattr/dd: $out"
    fi
    # A file's own override, set before it is written.
    if out=$(touch "$m/file1" 2>&1 && setfattr -n user.fbmm.policy -v bind,nodes=1 "$m/file1" 2>&1) &&
        out=$(dd if=/dev/zero of="$m/file1" bs=1M count=8 conv=notrunc 2>&1); then
        xattr_file_check xattr-file-bind1 "$m" /file1 1 8
    else
        fail xattr-file-bind1 "setfattr/dd: $out"
    fi
    # A plain file next to them follows the mount's policy.
    if out=$(dd if=/dev/zero of="$m/plain" bs=1M count=8 2>&1); then
        xattr_file_check xattr-none-mount-policy "$m" /plain 0 8
    else
        fail xattr-none-mount-policy "dd: $out"
    fi
    # On the root directory: the app's own file (created in the root) inherits it.
    if out=$(setfattr -n user.fbmm.policy -v interleave,nodes=1:2 "$m" 2>&1); then
        simple_check xattr-root-app-interleave "$m" "1=50 2=50" 32
    else
        fail xattr-root-app-interleave "setfattr on the mount root: $out"
    fi
    umount_fs "$m"
fi

# ---- migration while the app keeps using its memory ---------------------------------------
if mount_fs migrate bind nodes=0; then
    m=$mnt
    if app_start "$m" && app_cmd alloc 64 && app_arena; then
        r=$reply
        judge migrate-before "0=100" "$r" "$(stat_file_nodes "$m" "/${arena##*/}")"
        if app_cmd busy 0; then
            out=$("$fbmm" migrate "$arena" --to 2 2>&1); mrc=$?
            if app_cmd stop; then
                stop=$reply
                app_cmd check 0; r=$reply
                moved=$(awk '/^moved/ { print $2 }' <<<"$out")
                if [ $mrc -ne 0 ]; then fail migrate-whole "fbmm migrate --to 2 failed ($mrc): $out"
                elif ! jq -e '.errors == 0 and .passes >= 1' <<<"$stop" >/dev/null; then fail migrate-whole "the app saw wrong data while it ran: $stop"
                elif [ "${moved:-0}" -lt $((64 * MiB * (100 - tol) / 100)) ]; then fail migrate-whole "moved only ${moved:-0} bytes of 64 MiB: $out"
                else
                    judge migrate-whole "2=100" "$r" "$(stat_file_nodes "$m" "/${arena##*/}")" &&
                        echo "  migrate-whole: $out; app thread made $(jq .passes <<<"$stop") passes over the buffer meanwhile, no errors" >&2
                fi
            else
                fail migrate-whole "stop: $reply"
            fi
        else
            fail migrate-whole "busy: $reply"
        fi
        # Pages allocated after a whole-file migration land on the target node.
        if app_cmd alloc 16; then
            judge migrate-new-pages "2=100" "$reply" -
        else
            fail migrate-new-pages "alloc: $reply"
        fi
        # The range form: half of a new buffer to node 1, the rest stays on 2.
        if app_cmd alloc 32; then
            off=$(jq -r .file_offset <<<"$reply")
            out=$("$fbmm" migrate "$arena" --to 1 --offset "$off" --length 16M 2>&1); mrc=$?
            if [ $mrc -ne 0 ]; then
                fail migrate-range "fbmm migrate --offset $off --length 16M failed ($mrc): $out"
            else
                app_cmd check 2 0 $((16 * MiB)); first=$reply
                app_cmd check 2 $((16 * MiB)) $((16 * MiB)); second=$reply
                app_cmd check 0; other=$reply
                ok=1
                judge migrate-range-moved "1=100" "$first" - || ok=0
                judge migrate-range-rest-stays "2=100" "$second" - || ok=0
                judge migrate-range-other-buffer-stays "2=100" "$other" - || ok=0
                # The whole file against fbmm stat: 64+16+16 MiB on node 2, 16 MiB on node 1.
                app_cmd check all; all=$reply
                judge migrate-range-stat "1=14.286 2=85.714" "$all" "$(stat_file_nodes "$m" "/${arena##*/}")"
            fi
        else
            fail migrate-range "alloc: $reply"
        fi
    else
        fail migrate-before "app: $reply"
    fi
    app_quit
    umount_fs "$m"
fi

# ---- the pre-zeroed pool: its ready pages are on the policy's nodes --------------------------
# poolcheck churns small mappings under the shim (every handed-out range is checked
# zero), frees everything and waits: what its arena then holds is the pool (ready,
# zeroed pages) and the control block. Those pages must be where the policy says.
poolcheck=${POOLCHECK_APP:-$work/poolcheck}
if [ -z "${POOLCHECK_APP:-}" ] && ! cc -O1 -pthread -o "$poolcheck" "$root/Tests/shim/poolcheck.c" 2>"$work/cc.err"; then
    fail pool-build "cannot build poolcheck: $(cat "$work/cc.err")"
else
    # pool_check NAME POLICY OPTIONS EXPECT [NEW-POLICY]: EXPECT as "node=percent ..." of the
    # idle arena; with NEW-POLICY, the arena's user.fbmm.policy is set to it first (the pool
    # must then take its ready pages back and refill them where the new policy says).
    pool_check() {
        local name=$1 expect=$4
        mount_fs "$name" "$2" "$3" || return
        local m=$mnt ready=$work/$name.ready go=$work/$name.go
        # No malloc block cache: freed calloc blocks would stay mapped as the program's own.
        FBMM_MALLOC_CACHE=0 "$fbmm" run --strict --mount "$m" --min-size 4K -- "$poolcheck" --threads 1 --iters 150 --forks 1 \
            --ready "$ready" --go "$go" >"$work/$name.out" 2>&1 &
        local pid=$!
        for _ in $(seq 1 600); do [ -e "$ready" ] && break; sleep 0.1; done
        sleep 1   # the daemon zeroes what was freed last
        local st; st=$("$fbmm" stat "$m" --json 2>&1)
        if [ -n "${5:-}" ]; then
            local arena_path; arena_path=$m$(jq -r '.files[0].path' <<<"$st")
            setfattr -n user.fbmm.policy -v "$5" "$arena_path" 2>&1
            sleep 3
            st=$("$fbmm" stat "$m" --json 2>&1)
            if [ "$(jq '.prezero.revoked_bytes // 0' <<<"$st")" -le 0 ]; then
                fail "$name" "the policy changed but no ready page was revoked: $(jq -c .prezero <<<"$st")"
                touch "$go"; wait "$pid"; umount_fs "$m"; return
            fi
        fi
        touch "$go"
        wait "$pid"; local rc=$?
        if [ ! -e "$ready" ] || [ $rc -ne 0 ]; then
            fail "$name" "poolcheck under the shim failed ($rc): $(tail -c 600 "$work/$name.out")"
        else
            local ready_b bytes nodes
            ready_b=$(jq '.prezero.ready_bytes // 0' <<<"$st")
            bytes=$(jq '[.files[0].nodes[]] | add // 0' <<<"$st")
            nodes=$(jq -r '.files[0].nodes | to_entries | map("\(.key):\(.value)") | join(" ")' <<<"$st")
            if [ "$ready_b" -le 0 ] || [ "$bytes" -lt "$ready_b" ]; then
                fail "$name" "pool not ready or not resident: ready $ready_b bytes, arena resident $bytes; $nodes"
            else
                local pages v
                pages=$(jq -r --argjson page "$page" '.files[0].nodes | to_entries | map("\(.key):\(.value / $page | floor)") | join(" ")' <<<"$st")
                v=$(verdict "$expect" "$pages" -)
                if [[ $v == ok* ]]; then pass "$name" "pool ready $((ready_b / MiB)) MiB; idle arena ${v#ok }"
                else fail "$name" "pool ready $((ready_b / MiB)) MiB; idle arena ${v#bad }"; fi
            fi
        fi
        umount_fs "$m"
    }
    pool_check pool-bind1 bind nodes=1,prezero=16M "1=100"
    pool_check pool-bind2 bind nodes=2,prezero=16M "2=100"
    pool_check pool-interleave02 interleave nodes=0:2,prezero=16M "0=50 2=50"
    pool_check pool-policy-change bind nodes=1,prezero=16M "2=100" bind,nodes=2
fi

# ---- contig: huge pages, on the policy's node ----------------------------------------------
# The guest's own kernel: allow shmem THP where a mapping asks (the host is not touched).
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
if [ -w "$thp" ] && echo advise >"$thp" 2>/dev/null; then
    if mount_fs contig2 contig nodes=2; then
        m=$mnt
        simple_check contig-node2 "$m" "2=100" 32
        out=$("$fbmm" run --strict --mount "$m" -- "$root/shim/build/probe" hugepmd 32 2>&1)
        kb=$(awk '/^pmd_kb/ { print $2 }' <<<"$out")
        if [ "${kb:-0}" -ge $((24 * 1024)) ]; then pass contig-huge "${kb} kB of 32 MiB PMD-mapped"
        else fail contig-huge "only ${kb:-0} kB PMD-mapped: $out"; fi
        umount_fs "$m"
    fi
else
    fail contig-huge "cannot enable shmem THP in the guest ($thp)"
fi

echo "$passed passed, $failed failed (${SECONDS}s)"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
