#!/usr/bin/env bash
# Runs the shim's checks: the semantics program natively and under the shim,
# then real programs under the shim compared with native runs, stress-ng's
# memory stressors, and the share of each program's memory that lands in the
# mount (RssShmem vs RssAnon at peak) with the system allocator and with
# jemalloc / mimalloc preloaded after the shim.
#
# By default it mounts a private tmpfs (tmpfs mode of the shim: no daemon).
# Point it at a real fbmm mount instead with FBMM_MOUNT=/path (not mounted or
# unmounted by this script). Other knobs:
#   SHIM=/path/libfbmm-shim.so   (default: build/libfbmm-shim.so next to this)
#   SEMANTICS=/path/semantics    (default: build/semantics)
#   SKIP_STRESS=1                skip stress-ng
#   STRESS_TIMEOUT=5s
# Exit status: number of failed checks (0 = all passed).
set -u
here=$(cd "$(dirname "$0")" && pwd)
SHIM=${SHIM:-$here/build/libfbmm-shim.so}
SEMANTICS=${SEMANTICS:-$here/build/semantics}
STRESS_TIMEOUT=${STRESS_TIMEOUT:-5s}
JEMALLOC=$(ls /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/*/libjemalloc.so.2 2>/dev/null | head -1)
MIMALLOC=$(ls /usr/lib/x86_64-linux-gnu/libmimalloc.so.2 /usr/lib/*/libmimalloc.so.2* 2>/dev/null | head -1)

fails=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

[ -f "$SHIM" ] || { echo "no shim at $SHIM (make -C shim)"; exit 1; }
[ -x "$SEMANTICS" ] || { echo "no semantics at $SEMANTICS (make -C shim test-programs)"; exit 1; }

work=$(mktemp -d /tmp/fbmm-shim-test.XXXXXX)
chmod 755 "$work"
mkdir -m 1777 "$work/stress"
mounted=""
if [ -z "${FBMM_MOUNT:-}" ]; then
    FBMM_MOUNT=$work/mnt
    mkdir -p "$FBMM_MOUNT"
    # size: sparse arena files may be large; the memory really used is what
    # the programs touch. mode 1777: stressors run as nobody (see below).
    mount -t tmpfs -o size=90%,mode=1777 fbmm-test "$FBMM_MOUNT" || { echo "cannot mount tmpfs"; exit 1; }
    mounted=$FBMM_MOUNT
fi
cleanup() {
    [ -n "$mounted" ] && umount "$mounted"
    rm -rf "$work"
}
trap cleanup EXIT
echo "# shim $SHIM, mount $FBMM_MOUNT"

# with ALLOCATOR: sets W to the `env ...` prefix that runs a command under
# the shim, with ALLOCATOR (system|jemalloc|mimalloc) preloaded after it as
# `fbmm run --allocator` does. A prefix, not a function, so that the PID of
# a background job is the program's own (env execs it).
with() {
    local pre=$SHIM
    case "$1" in
        jemalloc) pre=$SHIM:$JEMALLOC ;;
        mimalloc) pre=$SHIM:$MIMALLOC ;;
    esac
    W=(env LD_PRELOAD="$pre" FBMM_MOUNT="$FBMM_MOUNT")
}

# peak OUT CMD...: runs CMD in the background, stdout to OUT, sampling
# /proc/PID/status; prints "shmem_kB anon_kB" at the sample where their sum
# peaked; returns CMD's exit status.
peak() {
    local out=$1; shift
    "$@" >"$out" 2>"$out.err" &
    local pid=$! best=0 bs=0 ba=0 s a
    while kill -0 "$pid" 2>/dev/null; do
        read -r s a < <(awk '/^RssShmem/{s=$2} /^RssAnon/{a=$2} END{print s+0, a+0}' \
                        "/proc/$pid/status" 2>/dev/null)
        if [ -n "${s:-}" ] && [ $((s + a)) -gt "$best" ]; then best=$((s + a)); bs=$s; ba=$a; fi
        sleep 0.05
    done
    wait "$pid"
    local rc=$?
    echo "$bs $ba"
    return $rc
}
report() {  # report NAME "shmem anon"
    local s=${2% *} a=${2#* }
    local t=$((s + a))
    [ "$t" -gt 0 ] || t=1
    printf '# memory %-28s RssShmem %8d kB  RssAnon %8d kB  in mount %3d%%\n' "$1" "$s" "$a" $((100 * s / t))
}

# ---- semantics -----------------------------------------------------------
if env -u LD_PRELOAD -u FBMM_MOUNT "$SEMANTICS" >"$work/sem-native" 2>&1; then pass "semantics native"
else fail "semantics native"; grep FAIL "$work/sem-native"; fi
for alloc in system jemalloc mimalloc; do
    [ "$alloc" = jemalloc ] && [ -z "$JEMALLOC" ] && continue
    [ "$alloc" = mimalloc ] && [ -z "$MIMALLOC" ] && continue
    with $alloc
    if "${W[@]}" timeout 300 "$SEMANTICS" >"$work/sem-$alloc" 2>&1; then pass "semantics under shim ($alloc)"
    else fail "semantics under shim ($alloc)"; grep -E 'FAIL|^[^P#]' "$work/sem-$alloc" | head -20; fi
done

# ---- python3 -------------------------------------------------------------
if command -v python3 >/dev/null; then
    py='b = bytearray(range(256)) * (200 * 1024 * 1024 // 256)
objs = [str(i) * 10 for i in range(300000)]
print(len(b), sum(b), sum(len(o) for o in objs))'
    python3 -c "$py" >"$work/py-native"
    for alloc in system jemalloc; do
        [ "$alloc" = jemalloc ] && [ -z "$JEMALLOC" ] && continue
        with $alloc
        m=$(peak "$work/py-$alloc" "${W[@]}" python3 -c "$py")
        rc=$?
        if [ $rc -eq 0 ] && cmp -s "$work/py-native" "$work/py-$alloc"; then pass "python3 ($alloc)"
        else fail "python3 ($alloc): rc $rc"; cat "$work/py-$alloc.err"; fi
        report "python3 ($alloc)" "$m"
    done
fi

# ---- sort ----------------------------------------------------------------
awk 'BEGIN { srand(7); for (i = 0; i < 2000000; i++) printf "%d %x line %d\n", int(rand() * 1e9), i * 2654435761 % 4294967296, i }' >"$work/sort-in"
LC_ALL=C sort -S 200M "$work/sort-in" >"$work/sort-native"
for alloc in system jemalloc; do
    [ "$alloc" = jemalloc ] && [ -z "$JEMALLOC" ] && continue
    with $alloc
    m=$(peak "$work/sort-$alloc" "${W[@]}" LC_ALL=C sort -S 200M "$work/sort-in")
    rc=$?
    if [ $rc -eq 0 ] && cmp -s "$work/sort-native" "$work/sort-$alloc"; then pass "sort -S 200M ($alloc)"
    else fail "sort -S 200M ($alloc): rc $rc"; fi
    report "sort -S 200M ($alloc)" "$m"
done

# ---- sqlite3 -------------------------------------------------------------
if command -v sqlite3 >/dev/null; then
    sql="PRAGMA cache_size=-1000000;
CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c INTEGER);
WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 1000000)
INSERT INTO t SELECT x, printf('%08d-%s', (x * 7919) % 1000003, hex(x * x)), x % 97 FROM s;
CREATE INDEX tb ON t(b);
SELECT count(*), sum(length(b)), sum(c) FROM t;
SELECT a, b FROM t ORDER BY b LIMIT 3;
SELECT c, count(*) FROM t GROUP BY c ORDER BY 2 DESC, 1 LIMIT 3;
DELETE FROM t WHERE c < 50;
SELECT count(*), max(b) FROM t;"
    sqlite3 :memory: "$sql" >"$work/sql-native"
    for alloc in system jemalloc; do
        [ "$alloc" = jemalloc ] && [ -z "$JEMALLOC" ] && continue
        with $alloc
        m=$(peak "$work/sql-$alloc" "${W[@]}" sqlite3 :memory: "$sql")
        rc=$?
        if [ $rc -eq 0 ] && cmp -s "$work/sql-native" "$work/sql-$alloc"; then pass "sqlite3 ($alloc)"
        else fail "sqlite3 ($alloc): rc $rc"; cat "$work/sql-$alloc.err"; fi
        report "sqlite3 ($alloc)" "$m"
    done
fi

# ---- stress-ng -----------------------------------------------------------
if [ -z "${SKIP_STRESS:-}" ] && command -v stress-ng >/dev/null; then
    # Unprivileged: as root, the madvise stressor may try MADV_HWPOISON.
    drop=()
    if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
        drop=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    fi
    for s in "--vm 1 --vm-bytes 128M --verify" "--mmap 1 --verify" "--mremap 1 --verify" \
             "--madvise 1 --verify" "--malloc 1 --verify" "--fork 1" "--mmapfork 1"; do
        with system
        # shellcheck disable=SC2086
        if (cd "$work/stress" && "${W[@]}" "${drop[@]}" stress-ng $s --timeout "$STRESS_TIMEOUT" \
                --temp-path "$work/stress" >"$work/stress.log" 2>&1); then pass "stress-ng $s"
        else fail "stress-ng $s"; tail -5 "$work/stress.log"; fi
    done
fi

echo "# $fails failure(s)"
exit $fails
