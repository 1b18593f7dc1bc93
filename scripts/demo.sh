#!/usr/bin/env bash
# The DVMS-rs demo on this machine, as root: a local testbed of 3 libvirt hosts, 12 tiny
# guests, a dvms-node daemon on every host; CPU load injected inside h1's guests with
# cpulimit overloads h1, and the daemons repair it by live migration, with nobody in
# charge.
#   scripts/demo.sh
# It leaves the testbed and the daemons running for you to explore;
# `dvms-launch testbed down` removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# Release builds: what users run (a debug build checks every overflow and panics on one;
# the tests use it, the demo does not). dvms-launch starts the dvms-node built beside it.
cargo build --release -p launcher --bin dvms-launch -p dvms-node --bin dvms-node
L=target/release/dvms-launch
trap 'echo "demo failed: removing the testbed" >&2; $L testbed down >&2 || true' ERR

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "testbed: 3 hypervisor hosts (network namespace + libvirtd each)"
$L testbed up --hosts 3
step "deploy 12 guests, round-robin"
$L deploy --vms 12 --kernel-args dvms.tick=250
$L status
step "start a DVMS daemon on every host (80 % of a core each: the hosts share this machine)"
$L daemons start --capacity-cpu 80
sleep 8
$L daemons status
step "inject 30 % CPU load inside each of h1's 4 guests (cpulimit in the guest)"
for vm in $($L status --json | python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin)["vms"] if v["host"]=="h1"))'); do
  $L guest "$vm" load 30
done
step "wait for the daemons to detect the overload and repair it"
EVENTS=$(ls -d /var/lib/dvms-launch/testbed-1/daemons)
for _ in $(seq 60); do
  grep -h '"event":"dissolved"' "$EVENTS"/*.events.jsonl 2>/dev/null | grep -q '"reason":"solved"' && break
  sleep 1
done
python3 - "$EVENTS" <<'PY'
import glob, json, sys
ev = sorted((json.loads(l) for f in glob.glob(sys.argv[1] + "/*.events.jsonl") for l in open(f)),
            key=lambda e: e["ts_ms"])
t0 = next((e["ts_ms"] for e in ev if e["event"] == "overloaded"), None)
keep = ("load", "migrations", "reason", "vm_name", "vm", "ok", "secs", "size")
for e in ev:
    if t0 is None or e["event"] in ("reserved", "leading", "left", "cleared"):
        continue
    extra = {k: v for k, v in e.items() if k in keep}
    print("+%6.2f s  %s  %-18s %s" % ((e["ts_ms"] - t0) / 1000, e["node"][-6:], e["event"], extra))
PY
sleep 4
$L daemons status
$L status
trap - ERR
cat <<EOM

The testbed and its daemons are running. Where to look:
  $L daemons status                   # each daemon: members, VMs, load, role
  curl -s 10.77.1.1:7080/status       # one daemon's view (JSON); /metrics for Prometheus
  http://10.77.1.1:7080/              # the live view in a browser on this machine
  cargo run --release -p dvms-replay -- --scenario experiments/scenarios/testbed-3x12.toml
                                      # a scenario's load replayed on these guests
  cat $EVENTS/h1.events.jsonl         # detection, partition, plan, migrations, dissolve
  $L guest vm-4 load 80               # more load: watch it being repaired
  $L daemons stop; $L testbed down    # remove everything
EOM
