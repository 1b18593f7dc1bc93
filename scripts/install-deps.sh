#!/usr/bin/env bash
# Installs what DVMS-rs needs on a fresh Debian 12 machine, as root. Idempotent:
# a second run installs nothing and takes about a second.
#   scripts/install-deps.sh
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "install-deps: run as root" >&2; exit 1; }

# The testbed's hypervisors (libvirt + QEMU/TCG), the guest image's inputs
# (busybox, cpulimit), namespaces and latency emulation (iproute2, iptables),
# the ssh provider and its test (openssh), the testbed CA (openssl), what the `virt` crate links, and what HiGHS
# (the placement solver, built from source by highs-sys) needs: cmake, g++, libclang;
# and headless Chromium for the test of the daemons' live view.
# NOT libvirt-daemon-system: it pulls in systemd, which a testbed host does not run.
PKGS=(
  qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  libvirt-dev pkg-config
  busybox-static cpio cpulimit
  iproute2 iptables util-linux
  openssh-server openssh-client
  gcc ca-certificates curl openssl
  cmake g++ libclang-dev
  chromium
)
missing_pkgs() {
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
# Twice: an install can remove a package installed before (a backported qemu-utils that
# Debian 12's qemu-system-x86 does not go with), which the second pass puts back.
for pass in 1 2; do
  missing_pkgs
  ((${#missing[@]})) || break
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  [ "$pass" = 1 ] && apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
missing_pkgs
if ((${#missing[@]})); then
  echo "install-deps: still missing after installing: ${missing[*]}" >&2
  exit 1
fi

# The testbed guest's kernel is fetched with apt-get download: the package lists must know it.
if ! apt-cache depends linux-image-cloud-amd64 2>/dev/null | grep -q "Depends: linux-image-"; then
  apt-get update -qq
fi

# The qemu driver resolves its compiled-in user before it reads qemu.conf, and the
# package that would create it is the one we must not install.
getent passwd libvirt-qemu >/dev/null ||
  useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
          --shell /usr/sbin/nologin libvirt-qemu

# Rust: the machine image ships rustup; a bare Debian gets it from the distribution.
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "install-deps: installing the Rust toolchain (Debian's cargo)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cargo rustc >/dev/null
fi
exit 0
