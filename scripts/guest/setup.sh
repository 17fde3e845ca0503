#!/usr/bin/env bash
# Installs what the multi-NUMA-node test guest (scripts/guest/run.sh) needs on
# Debian 12, as root. Idempotent; quick and silent when all is there.
#   apt:  qemu-system-x86, busybox-static (vng's initramfs), the newest Debian
#         6.12 kernel (linux-image-6.12-amd64 from bookworm-security, else the
#         newest linux-image-6.12.*+deb12-amd64 apt knows) and Debian 12's own
#         6.1 (the newest linux-image-6.1.0-N-amd64: the guest tests run on
#         both), numactl,
#         libfuse3-dev + fuse3 (guest probes), gcc, pkg-config
#   pip:  virtme-ng (vng), version $FBMM_VNG_VERSION (default 1.42), into the
#         python3 found on PATH (pyenv's here) or, for Debian's own python3, a
#         venv in /opt/fbmm-vng; /usr/local/bin/vng links to it when vng is not
#         already on PATH.
# Exit 0 when everything is in place, non-zero (with a message) otherwise.
set -eu -o pipefail
VNG_VERSION=${FBMM_VNG_VERSION:-1.42}
export DEBIAN_FRONTEND=noninteractive
say() { echo "guest-setup: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "must run as root"; exit 1; }

# ---- apt --------------------------------------------------------------------
want=(qemu-system-x86 busybox-static numactl fuse3 libfuse3-dev gcc libc6-dev pkg-config)
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
have_kernel() { compgen -G '/boot/vmlinuz-6.12.*+deb12-amd64' >/dev/null; }
have_stock_kernel() { compgen -G '/boot/vmlinuz-6.1.0-*-amd64' >/dev/null; }
updated=0
apt_update() { [ $updated = 1 ] || { say "apt-get update"; apt-get update -qq; updated=1; }; }
if ! have_kernel; then
    apt_update
    if apt-cache show linux-image-6.12-amd64 >/dev/null 2>&1; then
        missing+=(linux-image-6.12-amd64)
    else
        k=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' | awk '{print $1}' | sort -V | tail -n 1)
        [ -n "$k" ] || { say "no Debian 6.12 kernel package found (is bookworm-security or bookworm-backports in the apt sources?)"; exit 1; }
        missing+=("$k")
    fi
fi
if ! have_stock_kernel; then
    apt_update
    k=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1)
    [ -n "$k" ] || { say "no Debian 12 6.1 kernel package found (linux-image-6.1.0-N-amd64)"; exit 1; }
    missing+=("$k")
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    say "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
have_kernel || { say "kernel install failed: no /boot/vmlinuz-6.12.*+deb12-amd64"; exit 1; }
have_stock_kernel || { say "kernel install failed: no /boot/vmlinuz-6.1.0-*-amd64"; exit 1; }
kver=$(basename "$(ls -1 /boot/vmlinuz-6.12.*+deb12-amd64 | sort -V | tail -n 1)"); kver=${kver#vmlinuz-}
[ -d "/lib/modules/$kver" ] || { say "/lib/modules/$kver missing"; exit 1; }

# ---- virtme-ng ----------------------------------------------------------------
vng_ok() {  # $1: a vng executable
    [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q "$VNG_VERSION"
}
py=$(command -v python3 || true)
[ -n "$py" ] || { say "python3 not found"; exit 1; }
if [ "$(readlink -f "$py")" = "$(readlink -f /usr/bin/python3 2>/dev/null)" ]; then
    # Debian's python3 is externally managed (PEP 668): use a venv.
    bindir=/opt/fbmm-vng/bin
    if ! vng_ok "$bindir/vng"; then
        dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" ||
            { apt_update; apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null; }
        [ -x "$bindir/python3" ] || /usr/bin/python3 -m venv /opt/fbmm-vng
        say "pip install virtme-ng==$VNG_VERSION (venv /opt/fbmm-vng)"
        "$bindir/python3" -m pip install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION"
    fi
else
    bindir=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    if ! vng_ok "$bindir/vng"; then
        say "pip install virtme-ng==$VNG_VERSION ($py)"
        "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore "virtme-ng==$VNG_VERSION"
        command -v pyenv >/dev/null && pyenv rehash 2>/dev/null || true
    fi
fi
vng_ok "$bindir/vng" || { say "virtme-ng $VNG_VERSION did not install ($bindir/vng)"; exit 1; }
if ! command -v vng >/dev/null || ! vng_ok "$(command -v vng)"; then
    ln -sf "$bindir/vng" /usr/local/bin/vng
fi
exit 0
