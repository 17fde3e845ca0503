# Helpers the benchmark scripts share (sourced, not run).

# bench_fbmm: FBMM is $FBMM, else the release build when its shim lies
# beside it, else the debug build; exits when there is none.
bench_fbmm() {
    FBMM=${FBMM:-$( [ -x .build/release/fbmm ] && [ -f .build/release/libfbmm-shim.so ] && echo .build/release/fbmm || echo .build/debug/fbmm )}
    [ -x "$FBMM" ] || { echo "no fbmm at $FBMM: run scripts/build.sh" >&2; exit 1; }
}

# bench_umount DIR: unmounts a benchmark's mount, detaching it if still busy.
bench_umount() { "$FBMM" umount "$1" 2>/dev/null || "$FBMM" umount --force "$1" 2>/dev/null || true; }

# median: the median of the numbers on stdin, one per line.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# daemon_ms FBMM MOUNT: the CPU time (ms) the mount's daemon has used so far.
# The daemon works for programs off their threads (the pre-zeroed pool's
# zeroing, placement, copy-on-write): a benchmark that times only the
# program would not see it.
daemon_ms() {
    local pid
    pid=$("$1" stat --json "$2" | sed -nE 's/.*"daemon_pid" *: *([0-9]+).*/\1/p' | head -n 1)
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1000 / hz }' "/proc/$pid/stat"
}
