#!/usr/bin/env bash
# Runs all of DVMS-rs's checks and tests on this machine, as root (the tests build real
# libvirt testbeds in network namespaces). Installs what it needs first.
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/check-layout.sh

echo "== tests (unit, and integration on real libvirt/QEMU testbeds)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest runs no documentation examples.
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

echo "== Vivaldi accuracy on real Internet latencies (seeds 1-20, each gated; every pair kept, reported)"
scripts/check-accuracy.sh

echo "== simulator: one virtual hour of 64 hosts in four RIPE Atlas countries (per-host overlays), ring, locality, centralized"
cargo run -q -p experiments --bin dvms-sim -- --scenario experiments/scenarios/four-countries.toml
echo "== simulator: one virtual hour of 500 hosts / 5,000 VMs, DVMS against the centralized baseline (scripts/scales.sh runs up to 8,000 / 80,000)"
cargo run -q -p experiments --bin dvms-sim -- --scenario experiments/scenarios/scale-0.5k.toml

echo "== benchmarks (run once each, in the test profile; the idle daemon in release)"
cargo test -p overlay --bench neighbours
cargo test -p dvms-core --bench placement
cargo test -p experiments --bench solve_cost
cargo test -p launcher --bench deploy
cargo test -p dvms-tests --bench migration_model
# The idle daemon's memory and CPU are those of the build users run.
cargo build -q --release -p dvms-node
DVMS_NODE_BIN=target/release/dvms-node cargo test -p dvms-tests --bench idle_daemon
