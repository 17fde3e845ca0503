#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine with the Swift toolchain:
# install, build, mount a memory filesystem with a policy, run a real program
# with its memory in it, and show where that memory went. Run as root.
#   POLICY (default: interleave over every memory node), MIB (default 256)
set -eu -o pipefail
cd "$(dirname "$0")/.."
FBMM_NO_GUEST=1 bash scripts/setup.sh
fbmm=$(bash scripts/build.sh debug | tail -n 1)
nodes=$(cd /sys/devices/system/node && ls -d node[0-9]* 2>/dev/null | sed 's/node//' | sort -n |
        while read -r n; do awk '/MemTotal/ && $4 > 0 {found=1} END {exit !found}' "node$n/meminfo" && echo "$n"; done | paste -sd: -)
policy=${POLICY:-interleave}
options=${OPTIONS:-nodes=${nodes:-0}}
mib=${MIB:-256}
mnt=$(mktemp -d /tmp/fbmm-demo.XXXXXX)
cleanup() { "$fbmm" umount --force "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
echo "== fbmm mount $mnt --policy $policy -o $options"
"$fbmm" mount "$mnt" --policy "$policy" -o "$options"
ready=$(mktemp -u /tmp/fbmm-demo-ready.XXXXXX)
echo "== fbmm run --mount $mnt --allocator jemalloc -- python3 (a ${mib} MiB bytearray and an in-memory sqlite3 database)"
"$fbmm" run --mount "$mnt" --allocator jemalloc -- python3 - "$mib" "$ready" <<'PY' &
import os, sqlite3, sys, time
mib, ready = int(sys.argv[1]), sys.argv[2]
data = bytearray(mib << 20)
for i in range(0, len(data), 4096):
    data[i] = (i >> 12) & 0xff
db = sqlite3.connect(":memory:")
db.execute("create table t(k integer primary key, v text)")
db.executemany("insert into t values (?, ?)", ((i, "x" * 100) for i in range(200000)))
rows = db.execute("select count(*), sum(length(v)) from t").fetchone()
status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("RssAnon", "RssShmem")))
print(f"python3 pid {os.getpid()}: checksum {sum(data[::4096]) % 65521}, sqlite rows {rows[0]}; "
      f"RssShmem {status['RssShmem'].strip()} (in the mount), RssAnon {status['RssAnon'].strip()}", flush=True)
open(ready, "w").close()
time.sleep(3)
PY
app=$!
for _ in $(seq 300); do [ -e "$ready" ] && break; sleep 0.1; done
echo "== fbmm stat $mnt   (while python3 holds its memory)"
"$fbmm" stat "$mnt"
echo "== ls -ls $mnt"
ls -ls "$mnt"
wait "$app"
rm -f "$ready"
sleep 0.5
echo "== after python3 exited: its file and memory are gone"
ls -ls "$mnt"
"$fbmm" umount "$mnt"
trap - EXIT
rmdir "$mnt"
echo "== unmounted"
