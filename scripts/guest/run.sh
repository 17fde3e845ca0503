#!/usr/bin/env bash
# Boot a multi-NUMA-node qemu guest (virtme-ng, TCG) that runs the host's own
# filesystem, run one command in it, and return that command's exit status.
#
#   scripts/guest/run.sh [options] -- COMMAND [ARGS...]
#
# See scripts/guest/README.md for the full description. Exit status:
#   COMMAND's own status  when the command ran in the guest
#   2                     bad options
#   86                    guest unavailable (qemu, vng, busybox or kernel missing)
#   87                    guest failed: the command's status never came back
#                         (boot failure, kernel panic, qemu or vng error)
#   124                   timeout: boot + command took longer than --timeout
set -u -o pipefail

EX_USAGE=2
EX_UNAVAILABLE=86
EX_GUEST_FAILED=87
EX_TIMEOUT=124

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=fbmm-guest

usage() {
    cat <<'USAGE'
usage: scripts/guest/run.sh [options] -- COMMAND [ARGS...]

Boots a qemu guest (TCG, no KVM) with several NUMA nodes that sees the host's
filesystem, and runs COMMAND as root in the current directory. Prints
COMMAND's stdout/stderr and exits with its status.

options (environment variable in brackets):
  --kernel PATH       guest kernel image [FBMM_GUEST_KERNEL]
                      (default: newest /boot/vmlinuz-6.12.*+deb12-amd64)
  --topology "SPEC.." NUMA nodes, one SPEC per node, space separated, each
                      SIZE[,cpus=A[-B]] (SIZE 0 = memoryless node) [FBMM_GUEST_NUMA]
                      (default: "1G,cpus=0-1 1G 1G": node 0 has both CPUs,
                      nodes 1 and 2 are CPU-less, like CXL memory)
  --mem SIZE          guest memory (default: sum of the node sizes) [FBMM_GUEST_MEM]
  --cpus N            guest CPUs (default: 2) [FBMM_GUEST_CPUS]
  --distance S,D=V    NUMA distance between nodes S and D, repeatable
                      [FBMM_GUEST_DISTANCES, space separated] (default: qemu's 10/20)
  --rwdir DIR         make host DIR writable from the guest, repeatable
                      [FBMM_GUEST_RWDIRS, space separated]. Everything else of
                      the host is read-only in the guest; writes to /tmp, /etc,
                      /var, /usr, /home... go to a guest-only overlay and are lost.
  --timeout SECONDS   limit for boot + command (default 900) [FBMM_GUEST_TIMEOUT]
  --keep-numa-balancing  leave kernel.numa_balancing as the kernel sets it
                      (default: turned off before COMMAND runs)
  --kvm               use KVM instead of TCG [FBMM_GUEST_KVM=1]
  --verbose           show the guest kernel console (boot problems)
  --quiet             no timing summary line on stderr [FBMM_GUEST_QUIET=1]
  -h, --help          this text

exit status: COMMAND's status; 2 bad options; 86 guest unavailable
(prerequisite missing: run scripts/guest/setup.sh); 87 guest failed (COMMAND's
status never came back); 124 timeout.
USAGE
}

die_usage() { echo "$PROG: $*" >&2; echo "$PROG: try --help" >&2; exit $EX_USAGE; }
unavailable() { echo "guest unavailable: $*" >&2; exit $EX_UNAVAILABLE; }

kernel=${FBMM_GUEST_KERNEL:-}
topology=${FBMM_GUEST_NUMA:-"1G,cpus=0-1 1G 1G"}
mem=${FBMM_GUEST_MEM:-}
cpus=${FBMM_GUEST_CPUS:-2}
timeout_s=${FBMM_GUEST_TIMEOUT:-900}
kvm=${FBMM_GUEST_KVM:-0}
quiet=${FBMM_GUEST_QUIET:-0}
verbose=0
numa_balancing_off=1
read -r -a distances <<<"${FBMM_GUEST_DISTANCES:-}"
read -r -a rwdirs <<<"${FBMM_GUEST_RWDIRS:-}"

while [ $# -gt 0 ]; do
    case $1 in
        --kernel) [ $# -ge 2 ] || die_usage "$1 needs a value"; kernel=$2; shift 2 ;;
        --kernel=*) kernel=${1#*=}; shift ;;
        --topology|--numa) [ $# -ge 2 ] || die_usage "$1 needs a value"; topology=$2; shift 2 ;;
        --topology=*|--numa=*) topology=${1#*=}; shift ;;
        --mem|-m) [ $# -ge 2 ] || die_usage "$1 needs a value"; mem=$2; shift 2 ;;
        --mem=*) mem=${1#*=}; shift ;;
        --cpus) [ $# -ge 2 ] || die_usage "$1 needs a value"; cpus=$2; shift 2 ;;
        --cpus=*) cpus=${1#*=}; shift ;;
        --distance) [ $# -ge 2 ] || die_usage "$1 needs a value"; distances+=("$2"); shift 2 ;;
        --distance=*) distances+=("${1#*=}"); shift ;;
        --rwdir) [ $# -ge 2 ] || die_usage "$1 needs a value"; rwdirs+=("$2"); shift 2 ;;
        --rwdir=*) rwdirs+=("${1#*=}"); shift ;;
        --timeout) [ $# -ge 2 ] || die_usage "$1 needs a value"; timeout_s=$2; shift 2 ;;
        --timeout=*) timeout_s=${1#*=}; shift ;;
        --keep-numa-balancing) numa_balancing_off=0; shift ;;
        --kvm) kvm=1; shift ;;
        --verbose|-v) verbose=1; shift ;;
        --quiet|-q) quiet=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) die_usage "unknown option '$1' (put the command after --)" ;;
    esac
done
[ $# -gt 0 ] || die_usage "no command given (scripts/guest/run.sh [options] -- COMMAND [ARGS...])"
[[ $timeout_s =~ ^[0-9]+$ ]] && [ "$timeout_s" -gt 0 ] || die_usage "--timeout wants a positive number of seconds, not '$timeout_s'"
[[ $cpus =~ ^[0-9]+$ ]] && [ "$cpus" -gt 0 ] || die_usage "--cpus wants a positive number, not '$cpus'"

# ---- topology -> vng --numa arguments, total memory ------------------------
to_mib() {  # SIZE with optional K/M/G/T suffix (qemu: no suffix = MiB for -m; we ask for one)
    local s=$1 n u
    [[ $s =~ ^([0-9]+)([KkMmGgTt]?)[Bb]?$ ]] || return 1
    n=${BASH_REMATCH[1]}; u=${BASH_REMATCH[2]^^}
    case $u in
        K) [ $((n % 1024)) -eq 0 ] || return 1; echo $((n / 1024)) ;;
        M|"") echo "$n" ;;
        G) echo $((n * 1024)) ;;
        T) echo $((n * 1024 * 1024)) ;;
    esac
}
read -r -a nodes <<<"$topology"
[ ${#nodes[@]} -gt 0 ] || die_usage "empty --topology"
numa_args=()
total_mib=0
for spec in "${nodes[@]}"; do
    size=${spec%%,*}
    mib=$(to_mib "$size") || die_usage "bad node size '$size' in topology '$topology' (want e.g. 512M or 1G)"
    if [ "$spec" != "$size" ]; then
        rest=${spec#*,}
        [[ $rest =~ ^cpus=[0-9]+(-[0-9]+)?(,cpus=[0-9]+(-[0-9]+)?)*$ ]] ||
            die_usage "bad node spec '$spec' (want SIZE[,cpus=A[-B]])"
    fi
    total_mib=$((total_mib + mib))
    # qemu's memory-backend sizes take suffixes; give it MiB so 0 stays 0.
    if [ "$mib" -eq 0 ]; then numa_args+=(--numa "0${spec#"$size"}")
    else numa_args+=(--numa "${mib}M${spec#"$size"}"); fi
done
if [ -z "$mem" ]; then
    mem="${total_mib}M"
else
    m=$(to_mib "$mem") || die_usage "bad --mem '$mem'"
    [ "$m" -eq "$total_mib" ] || die_usage "--mem $mem does not match the sum of the node sizes (${total_mib}M)"
    mem="${m}M"
fi
# qemu wants a distance for every pair once one is given: default the rest to 20.
if [ ${#distances[@]} -gt 0 ]; then
    declare -A given=()
    for d in "${distances[@]}"; do
        [[ $d =~ ^([0-9]+),([0-9]+)=([0-9]+)$ ]] || die_usage "bad --distance '$d' (want SRC,DST=VAL)"
        s=${BASH_REMATCH[1]}; t=${BASH_REMATCH[2]}
        [ "$s" -lt ${#nodes[@]} ] && [ "$t" -lt ${#nodes[@]} ] || die_usage "--distance '$d' names a node that the topology does not have"
        given["$s,$t"]=1
        numa_args+=(--numa-distance "$d")
    done
    for ((s = 0; s < ${#nodes[@]}; s++)); do
        for ((t = s + 1; t < ${#nodes[@]}; t++)); do
            [ -n "${given[$s,$t]:-}" ] || [ -n "${given[$t,$s]:-}" ] || numa_args+=(--numa-distance "$s,$t=20")
        done
    done
fi

# ---- prerequisites ---------------------------------------------------------
find_vng() {
    local c py
    c=$(command -v vng 2>/dev/null) && { echo "$c"; return 0; }
    for c in /usr/local/bin/vng /root/.local/bin/vng /opt/fbmm-vng/bin/vng /root/.pyenv/shims/vng; do
        [ -x "$c" ] && { echo "$c"; return 0; }
    done
    for py in python3 /usr/bin/python3; do
        c=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/vng
        [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}
if [ -z "$kernel" ]; then
    kernel=$(ls -1 /boot/vmlinuz-6.12.*+deb12-amd64 2>/dev/null | sort -V | tail -n 1)
    [ -n "$kernel" ] || unavailable "no /boot/vmlinuz-6.12.*+deb12-amd64 (run scripts/guest/setup.sh, or pass --kernel / FBMM_GUEST_KERNEL)"
fi
[ -f "$kernel" ] && [ -r "$kernel" ] || unavailable "kernel image '$kernel' not found or not readable"
kernel=$(readlink -f "$kernel")
kver=$(basename "$kernel"); kver=${kver#vmlinuz-}
if [[ $(basename "$kernel") == vmlinuz-* ]] && [ ! -d "/lib/modules/$kver" ]; then
    unavailable "modules of kernel $kver missing (/lib/modules/$kver): install its linux-image package"
fi
command -v qemu-system-x86_64 >/dev/null || unavailable "qemu-system-x86_64 not found (apt-get install qemu-system-x86, or run scripts/guest/setup.sh)"
vng=$(find_vng) || unavailable "vng (virtme-ng) not found (run scripts/guest/setup.sh)"
# vng runs its helper virtme-run through PATH: it sits next to the real vng.
vng_bin=$(dirname "$(readlink -f "$vng")")
[ -x "$vng_bin/virtme-run" ] || unavailable "virtme-run not found next to $vng ($vng_bin)"
bb=$(command -v busybox 2>/dev/null || true)
if [ -z "$bb" ] || ldd "$bb" >/dev/null 2>&1; then
    unavailable "no statically linked busybox (apt-get install busybox-static)"
fi
command -v timeout >/dev/null || unavailable "timeout(1) not found"
if [ "$kvm" = 1 ] && ! [ -w /dev/kvm ]; then
    unavailable "--kvm asked for but /dev/kvm is not usable"
fi

# ---- the run directory, shared read-write with the guest -----------------------
# vng shares the host's / read-only (9p); /tmp, /etc, /var, /usr, /home, ...
# are guest-only overlays. Only --rwdir directories are written through to the
# host, so the command's status comes back through one of those.
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/fbmm-guest.XXXXXX") || unavailable "cannot create a run directory"
cleanup() { [ "${FBMM_GUEST_KEEP:-0}" = 1 ] || rm -rf "$run_dir"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf '%q ' "$@" >"$run_dir/cmd"
# The caller's environment, minus what belongs to this shell or this terminal.
export -p | grep -Ev '^declare -[a-zA-Z-]* (PWD|OLDPWD|SHLVL|_|SHELLOPTS|BASHOPTS|BASH_[A-Z_]*|TERM|COLUMNS|LINES|HOSTNAME|PS1|PS2|PROMPT_COMMAND)(=|$)' >"$run_dir/env"
cat >"$run_dir/conf" <<CONF
cwd=$(printf '%q' "$PWD")
numa_balancing_off=$numa_balancing_off
CONF
cp "$HERE/guest-init.sh" "$run_dir/guest-init.sh"

vng_args=(--run "$kernel" -m "$mem" --cpus "$cpus" "${numa_args[@]}" --rwdir="$run_dir" --cwd /)
[ "$kvm" = 1 ] || vng_args+=(--disable-kvm)
[ "$verbose" = 1 ] && vng_args+=(--verbose)
for d in "${rwdirs[@]}"; do
    [ -d "$d" ] || die_usage "--rwdir '$d' is not a directory"
    vng_args+=(--rwdir="$(readlink -f "$d")")
done

t0=$(date +%s.%N)
# qemu sets O_NONBLOCK on its stdio; give it private pipes so the caller's
# stdout/stderr (maybe a pipe shared with other writers) are left alone.
# stdin is /dev/null: with a terminal on stdin vng would go interactive.
# timeout(1) puts vng and qemu in their own process group and forwards a
# TERM/INT it receives to it; pass ours on so no guest outlives run.sh.
# A guest that never reached the command (qemu or virtme failing to start:
# seen once here: vng exit 255 after 11 s, no kernel output) is booted once more; a
# guest that started the command is never rerun.
for attempt in 1 2; do
    PATH="$vng_bin:$PATH" timeout -k 20 "$timeout_s" "$vng" "${vng_args[@]}" -- "bash $run_dir/guest-init.sh $run_dir" \
        </dev/null > >(cat) 2> >(cat >&2) &
    guest_pid=$!
    stop_guest() { kill "-$1" "$guest_pid" 2>/dev/null; wait "$guest_pid" 2>/dev/null; exit "$2"; }
    trap 'stop_guest INT 130' INT
    trap 'stop_guest TERM 143' TERM
    wait "$guest_pid"
    vng_rc=$?
    wait  # for the two cat processes
    if [ "$attempt" = 2 ] || [ -f "$run_dir/times" ] || [ -f "$run_dir/status" ] || [ "$vng_rc" -eq 124 ] || [ "$vng_rc" -eq 137 ]; then
        break
    fi
    echo "$PROG: the guest did not reach the command (vng exit $vng_rc); booting it once more" >&2
done
t1=$(date +%s.%N)

summary() {
    [ "$quiet" = 1 ] && return
    local boot="?" run="?" total
    total=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    if [ -f "$run_dir/times" ]; then
        read -r s e <"$run_dir/times"
        boot=$(awk -v s="$s" 'BEGIN{printf "%.1f", s}')
        [ -n "${e:-}" ] && run=$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.1f", e-s}')
    fi
    echo "$PROG: kernel $kver, ${#nodes[@]} nodes ($topology), $cpus cpus, $([ "$kvm" = 1 ] && echo KVM || echo TCG): boot ${boot}s, command ${run}s, total ${total}s, $*" >&2
}

if [ -f "$run_dir/status" ]; then
    rc=$(cat "$run_dir/status")
    [[ $rc =~ ^[0-9]+$ ]] || { summary "bad status '$rc'"; exit $EX_GUEST_FAILED; }
    summary "exit $rc"
    exit "$rc"
fi
if [ "$vng_rc" -eq 124 ] || [ "$vng_rc" -eq 137 ]; then
    echo "$PROG: timeout: boot + command took longer than ${timeout_s}s; guest killed" >&2
    summary "timeout"
    exit $EX_TIMEOUT
fi
if [ -f "$run_dir/times" ]; then
    echo "$PROG: guest failed: the command started but its status never came back (vng exit $vng_rc; guest crash or panic?)" >&2
else
    echo "$PROG: guest failed: the guest did not reach the command (vng exit $vng_rc; rerun with --verbose to see the kernel console)" >&2
fi
summary "no status"
exit $EX_GUEST_FAILED
