#!/usr/bin/env bash
# A walk through fbmm, as root, after `bash scripts/build.sh`:
#   mount a memory filesystem, run a program with its memory in it, see where that
#   memory is, move it, unmount. Each step prints the command it runs.
# Usage: examples/walkthrough.sh [POLICY [OPTIONS]]   (default: interleave over all nodes)
set -eu -o pipefail
cd "$(dirname "$0")/.."
fbmm=${FBMM:-$(swift build --show-bin-path 2>/dev/null)/fbmm}
[ -x "$fbmm" ] || { echo "walkthrough: $fbmm is not built: run scripts/build.sh first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "walkthrough: run as root (FUSE mounts)" >&2; exit 1; }

nodes=$(ls -d /sys/devices/system/node/node* | sed 's/.*node//' | sort -n | paste -sd:)
last=${nodes##*:}
policy=${1:-interleave}
options=${2:-nodes=$nodes}
dir=$(mktemp -d /tmp/fbmm-walkthrough.XXXXXX)
work=$(mktemp -d)
step() { printf '\n== %s\n' "$*"; }
cleanup() { "$fbmm" umount --force "$dir" 2>/dev/null || true; rmdir "$dir" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

step "the policies this fbmm knows"
"$fbmm" policies | grep -v '^    '

step "fbmm mount $dir --policy $policy -o $options"
"$fbmm" mount "$dir" --policy "$policy" -o "$options"
grep " $dir " /proc/mounts

step "an ordinary file in the mount is memory placed by the policy"
dd if=/dev/zero of="$dir/scratch" bs=1M count=8 status=none
ls -ls "$dir"
getfattr -d -m user.fbmm "$dir/scratch" 2>/dev/null
rm "$dir/scratch"

step "build examples/alloc_demo.c and run it natively"
cc -O2 -Wall -o "$work/alloc_demo" examples/alloc_demo.c
"$work/alloc_demo" 32

step "fbmm run --mount $dir -- alloc_demo 32 6   (malloc, calloc and mmap now come from the mount)"
"$fbmm" run --mount "$dir" -- "$work/alloc_demo" 32 6 &
app=$!
for _ in $(seq 50); do ls "$dir" | grep -q alloc_demo && break; sleep 0.1; done
sleep 1

step "fbmm stat $dir   (while alloc_demo holds its memory)"
"$fbmm" stat "$dir"

file=$(ls "$dir" | grep alloc_demo | head -1)
step "fbmm migrate $dir/$file --to $last   (pages move while the program runs)"
"$fbmm" migrate "$dir/$file" --to "$last"
"$fbmm" stat "$dir" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); [print(f["name"], f["nodes"]) for f in s["files"]]'

step "alloc_demo reports again and exits; its file and memory go with it"
wait "$app"
ls -A "$dir"
"$fbmm" stat "$dir" | sed -n 2p

step "fbmm umount $dir"
"$fbmm" umount "$dir"
rmdir "$dir"
trap 'rm -rf "$work"' EXIT
echo "done"
