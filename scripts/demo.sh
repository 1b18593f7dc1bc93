#!/usr/bin/env bash
# The DVMS-rs demo on this machine, as root: a local testbed of 3 libvirt hosts, 12 tiny
# guests, CPU load injected inside one guest with cpulimit, and a live migration.
#   sudo scripts/demo.sh
# It leaves the testbed running for you to explore; `dvms-launch testbed down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build -p launcher --bin dvms-launch
L=target/debug/dvms-launch
trap 'echo "demo failed: removing the testbed" >&2; $L testbed down >&2 || true' ERR

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "testbed: 3 hypervisor hosts (network namespace + libvirtd each)"
$L testbed up --hosts 3
step "deploy 12 guests, round-robin"
$L deploy --vms 12
$L status
step "inject 60 % CPU load inside vm-1 (cpulimit in the guest)"
$L guest vm-1 load 60
step "live-migrate vm-1 from h1 to h2"
$L migrate vm-1 h2
sleep 2
$L guest vm-1 ping
$L status
trap - ERR
cat <<EOM

The testbed is running. Try:
  $L exec all -- virsh -q list        # commands on every host
  $L guest vm-3 load 80               # load inside a guest
  $L migrate vm-3 h1
  cat /var/lib/dvms-launch/testbed-1/inventory.csv
  $L testbed down                     # remove everything
EOM
