#!/usr/bin/env bash
# Redis natively and under two fbmm policies, driven by redis-benchmark on loopback.
# As root, after `bash scripts/build.sh`, with redis-server and redis-benchmark
# installed (Debian: apt-get install redis-server redis-tools; fbmm's setup does not
# install them). Usage:
#   examples/redis-compare.sh [REQUESTS (default 100000)] [POLICY,OPTS ... (default: local, interleave over all nodes)]
#   examples/redis-compare.sh 200000 local 'interleave,nodes=0:1,weights=3:1'
# Each server listens on 127.0.0.1 only and is stopped before the next starts; every
# benchmark is bounded by REQUESTS. Prints requests per second per test and each
# policy's throughput as a ratio of the native run's, and how much of redis's memory
# was in the mount. Exits non-zero if a tool is missing or a run fails.
set -eu -o pipefail
cd "$(dirname "$0")/.."
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || {
        echo "redis-compare: $tool is not installed (Debian: apt-get install redis-server redis-tools)" >&2
        exit 2
    }
done
fbmm=${FBMM:-$(swift build --show-bin-path 2>/dev/null)/fbmm}
[ -x "$fbmm" ] || { echo "redis-compare: $fbmm is not built: run scripts/build.sh first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "redis-compare: run as root (FUSE mounts)" >&2; exit 1; }

requests=${1:-100000}
shift || true
nodes=$(ls -d /sys/devices/system/node/node* | sed 's/.*node//' | sort -n | paste -sd:)
if [ $# -gt 0 ]; then policies=("$@"); else policies=(local "interleave,nodes=$nodes"); fi
port=$(( 20000 + RANDOM % 20000 ))
tests=set,get,lpush,lpop,incr
work=$(mktemp -d /tmp/fbmm-redis.XXXXXX)
dir=
server=
cleanup() {
    [ -z "$server" ] || { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; }
    [ -z "$dir" ] || { "$fbmm" umount --force "$dir" 2>/dev/null || true; rmdir "$dir" 2>/dev/null || true; }
    rm -rf "$work"
}
trap cleanup EXIT

# run_one LABEL [fbmm run args...]: starts redis-server (under `fbmm run` if args are
# given), benchmarks it, writes "test rps" lines to $work/LABEL.
run_one() {
    local label=$1; shift
    "$@" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --protected-mode yes --daemonize no --logfile "$work/$label.log" &
    server=$!
    for _ in $(seq 100); do redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null || { echo "redis-compare: redis-server did not start ($label)" >&2; cat "$work/$label.log" >&2; exit 1; }
    redis-benchmark -h 127.0.0.1 -p "$port" -q -n "$requests" -c 20 -P 8 -d 256 -r 100000 -t "$tests" \
        | tr '\r' '\n' | grep 'requests per second' \
        | sed -E 's/^([A-Za-z_ ()0-9]+): ([0-9.]+) requests per second.*/\1\t\2/' > "$work/$label"
    [ -s "$work/$label" ] || { echo "redis-compare: redis-benchmark printed nothing ($label)" >&2; exit 1; }
    if [ -n "$dir" ]; then
        local used rss
        used=$("$fbmm" stat "$dir" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pool"]["used_bytes"])')
        rss=$(awk '/^VmRSS/ {print $2 * 1024}' /proc/"$(pgrep -P "$server" redis-server || echo "$server")"/status 2>/dev/null || echo 0)
        echo "$label: $((used >> 20)) MiB in the mount, redis RSS $((rss >> 20)) MiB"
    fi
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait "$server" 2>/dev/null || true
    server=
}

echo "redis-compare: $requests requests per test ($tests), 127.0.0.1:$port"
run_one native
labels=(native)
for spec in "${policies[@]}"; do
    name=${spec%%,*}
    opts=${spec#"$name"}; opts=${opts#,}
    dir=$(mktemp -d /tmp/fbmm-redis-mnt.XXXXXX)
    if [ -n "$opts" ]; then "$fbmm" mount "$dir" --policy "$name" -o "$opts"; else "$fbmm" mount "$dir" --policy "$name"; fi
    run_one "$spec" "$fbmm" run --mount "$dir" --allocator system --
    "$fbmm" umount "$dir"
    rmdir "$dir"
    dir=
    labels+=("$spec")
done

echo
printf '%-12s' test; for l in "${labels[@]}"; do printf '  %24s' "$l"; done; echo
cut -f1 "$work/native" | while IFS= read -r t; do
    base=$(awk -F'\t' -v t="$t" '$1 == t {print $2}' "$work/native")
    printf '%-12s' "$t"
    for l in "${labels[@]}"; do
        v=$(awk -F'\t' -v t="$t" '$1 == t {print $2}' "$work/$l")
        printf '  %12s rps (%4.2fx)' "$v" "$(awk -v v="$v" -v b="$base" 'BEGIN {print (b > 0 ? v / b : 0)}')"
    done
    echo
done
