#!/bin/bash
# Runs inside the guest (started by scripts/guest/run.sh through vng).
# $1: the run directory, shared read-write with the host.
run_dir=$1
read -r up _ </proc/uptime
echo "$up" >"$run_dir/times"

# shellcheck disable=SC1091
. "$run_dir/conf"
# The caller's environment. Read-only variables of bash fail silently.
# shellcheck disable=SC1091
. "$run_dir/env" 2>/dev/null

if [ "$numa_balancing_off" = 1 ] && [ -w /proc/sys/kernel/numa_balancing ]; then
    echo 0 >/proc/sys/kernel/numa_balancing ||
        echo "fbmm-guest: could not turn numa_balancing off" >&2
fi
if [ ! -c /dev/fuse ] || ! grep -qw fuse /proc/filesystems; then
    modprobe fuse 2>/dev/null
fi
[ -c /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229 2>/dev/null
[ -c /dev/fuse ] || echo "fbmm-guest: warning: /dev/fuse is missing in the guest" >&2

cd "$cwd" || { echo "fbmm-guest: cannot enter $cwd in the guest" >&2; echo 126 >"$run_dir/status"; exit 126; }
eval "$(cat "$run_dir/cmd")" </dev/null
rc=$?
read -r up2 _ </proc/uptime
echo "$up $up2" >"$run_dir/times"
echo "$rc" >"$run_dir/status.tmp" && mv "$run_dir/status.tmp" "$run_dir/status"
sync
exit "$rc"
