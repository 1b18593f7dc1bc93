#!/usr/bin/env bash
# The layout the project keeps, checked (part of scripts/test.sh):
# - the scheduling core is pure: `dvms-core` depends on no async runtime, network stack or
#   libvirt; the simulator (`experiments`) does not depend on the daemon or the launcher,
#   and nothing it builds probes for system libraries (no pkg-config: it builds without
#   libvirt-dev);
# - nothing in the repository reads files outside it (the developers' folder beside the
#   repository is not part of it).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
deps() { cargo tree -q -p "$1" -e normal,build --prefix none | awk '{print $1}' | sort -u; }
check() {
  local crate=$1 forbidden=$2 found
  found=$(deps "$crate" | grep -xE "$forbidden" || true)
  if [ -n "$found" ]; then
    echo "check-layout: $crate depends on $(echo $found | tr '\n' ' ')" >&2
    fail=1
  else
    echo "check-layout: $crate depends on none of: $forbidden"
  fi
}
check dvms-core 'tokio|libp2p|axum|hyper|virt|virt-sys|pkg-config|prometheus-client|dvms-node|launcher'
check experiments 'tokio|libp2p|axum|virt|virt-sys|pkg-config|dvms-node|launcher'
if git grep -n -e '\.\./shared' >&2; then
  echo "check-layout: the lines above read outside the repository" >&2
  fail=1
else
  echo "check-layout: nothing refers to files outside the repository"
fi
exit $fail
