#!/usr/bin/env bash
# Self-test of the guest harness: builds Tests/guest's probes on the host, boots
# the default 3-node guest once and runs them there. Options are passed to
# run.sh (e.g. --kernel, --topology). Exit status as run.sh's.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
"$here/build-probe.sh" || exit 1
cd "$root" || exit 1
exec "$here/run.sh" "$@" -- bash -c '
    set -u
    echo "guest: kernel $(uname -r), $(nproc) cpus, numa_balancing=$(cat /proc/sys/kernel/numa_balancing)"
    for n in /sys/devices/system/node/node[0-9]*; do
        echo "guest: $(basename "$n"): cpus [$(cat "$n/cpulist")], $(awk "/MemTotal/ {print \$4, \$5}" "$n/meminfo")"
    done
    rc=0
    start=$(date +%s.%N)
    Tests/guest/build/placement_probe || rc=1
    echo "guest: placement_probe took $(awk -v s="$start" -v e="$(date +%s.%N)" "BEGIN{printf \"%.2f\", e-s}")s"
    if [ -x Tests/guest/build/fuse_probe ]; then
        Tests/guest/build/fuse_probe || rc=1
    else
        echo "guest: fuse_probe not built; checking /dev/fuse only"
        [ -c /dev/fuse ] && exec 3<>/dev/fuse && echo "ok   /dev/fuse opens" || { echo "FAIL /dev/fuse"; rc=1; }
    fi
    command -v fusermount3 >/dev/null && echo "ok   fusermount3 present" || echo "info fusermount3 not installed"
    exit $rc
'
