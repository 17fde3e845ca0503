#!/usr/bin/env bash
# fork under the shim against native anonymous memory, in the same run:
#   (a) Tests/shim/cowfork: fork-return time with 256 MiB and 1 GiB resident
#       and an idle child, the mount's resident bytes while that child lives,
#       and the parent's cost per page written while it lives;
#   (b) redis BGSAVE (1M keys from DEBUG POPULATE plus twenty 2.7 MB values):
#       redis's own fork time (INFO latest_fork_usec) and the save's wall
#       time, native and under the shim (redis-server from Debian; installed
#       with apt-get when missing).
# Each figure is the median of REPS runs, native and fbmm alternating.
# Usage: scripts/bench-fork.sh   (root, /dev/fuse; after scripts/build.sh)
# Knobs: REPS=5 SIZES="256 1024" REDIS=1 FBMM=.build/debug/fbmm MOUNT_OPTIONS=""
set -eu -o pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
REPS=${REPS:-5}
SIZES=${SIZES:-"256 1024"}
REDIS=${REDIS:-1}
bench_fbmm
make -s -C shim all test-programs
COW=$PWD/shim/build/cowfork

mnt=$(mktemp -d /tmp/fbmm-bench-fork.XXXXXX)
redis_pid=
cleanup() {
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
    bench_umount "$mnt"
    rmdir "$mnt" 2>/dev/null || true
    rm -rf "${rdir:-}"
}
trap cleanup EXIT
opts=()
for o in ${MOUNT_OPTIONS:-}; do opts+=(-o "$o"); done
"$FBMM" mount "$mnt" "${opts[@]}"

field() { awk -v k="$1" '$1 == k { print $2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }
under() { "$FBMM" run --mount "$mnt" -- "$@" 2>/dev/null; }

echo "fork with an idle child (median of $REPS; ratio = fbmm / native)"
printf '%-8s %12s %12s %7s %16s %14s %14s %7s\n' size native-ms fbmm-ms ratio mount-bytes native-us/page fbmm-us/page ratio
for mb in $SIZES; do
    nf=(); ff=(); nw=(); fw=(); fb=()
    for _ in $(seq "$REPS"); do
        out=$(LD_PRELOAD= FBMM_MOUNT= "$COW" bench "$mb"); nf+=("$(field fork-ms <<<"$out")"); nw+=("$(field write-us <<<"$out")")
        out=$(under "$COW" bench "$mb"); ff+=("$(field fork-ms <<<"$out")"); fw+=("$(field write-us <<<"$out")")
        out=$(under "$COW" resident "$mb"); fb+=("$(field mount-bytes <<<"$out")")
    done
    n=$(printf '%s\n' "${nf[@]}" | median); f=$(printf '%s\n' "${ff[@]}" | median)
    a=$(printf '%s\n' "${nw[@]}" | median); b=$(printf '%s\n' "${fw[@]}" | median)
    bytes=$(printf '%s\n' "${fb[@]}" | median)
    printf '%-8s %12.2f %12.2f %7s %16.0f %14.2f %14.2f %7s\n' "${mb}M" "$n" "$f" "$(ratio "$f" "$n")" "$bytes" "$a" "$b" "$(ratio "$b" "$a")"
done
echo "(mount-bytes: what the mount's files hold while the child lives; the parent alone holds size)"

[ "$REDIS" = 1 ] || exit 0
if ! command -v redis-server >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
rdir=$(mktemp -d /tmp/fbmm-bench-redis.XXXXXX)
chmod 777 "$rdir"
port=$(( 20000 + RANDOM % 20000 ))
cli() { redis-cli -p "$port" "$@"; }
bgsave() {  # prints "fork-us wall-ms" for one BGSAVE
    local t0 t1
    t0=$(date +%s%N)
    cli BGSAVE >/dev/null
    while cli INFO persistence | grep -q 'rdb_bgsave_in_progress:1'; do sleep 0.005; done
    t1=$(date +%s%N)
    echo "$(cli INFO stats | tr -d '\r' | awk -F: '$1 == "latest_fork_usec" { print $2 }') $(( (t1 - t0) / 1000000 ))"
}
populate() {
    cli DEBUG POPULATE 1000000 >/dev/null
    local big
    big=$(head -c 2700000 /dev/zero | tr '\0' 'v')
    for i in $(seq 20); do printf '%s' "$big" | cli -x SET "big:$i" >/dev/null; done
}
run_redis() {  # $1: native|fbmm; prints REPS lines of "fork-us wall-ms"
    local cmd=(redis-server --port "$port" --save "" --appendonly no --dir "$rdir" --dbfilename dump.rdb)
    if [ "$1" = fbmm ]; then "$FBMM" run --mount "$mnt" -- "${cmd[@]}" >/dev/null 2>&1 & else "${cmd[@]}" >/dev/null 2>&1 & fi
    redis_pid=$!
    for _ in $(seq 100); do cli PING >/dev/null 2>&1 && break; sleep 0.05; done
    populate
    for _ in $(seq "$REPS"); do bgsave; done
    cli SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
}
native=$(run_redis native); fbmm=$(run_redis fbmm)
nf=$(awk '{ print $1 }' <<<"$native" | median); ff=$(awk '{ print $1 }' <<<"$fbmm" | median)
nw=$(awk '{ print $2 }' <<<"$native" | median); fw=$(awk '{ print $2 }' <<<"$fbmm" | median)
echo
echo "redis BGSAVE, 1M keys + 20 x 2.7 MB (median of $REPS)"
printf '%-10s %12s %12s %7s\n' "" native fbmm ratio
printf '%-10s %12s %12s %7s\n' fork-us "$nf" "$ff" "$(ratio "$ff" "$nf")"
printf '%-10s %12s %12s %7s\n' save-ms "$nw" "$fw" "$(ratio "$fw" "$nw")"
