#!/usr/bin/env bash
# The simulator at the seeds' scales: 500 hosts / 5,000 VMs up to 8,000 / 80,000, one
# virtual hour each, DVMS against the centralized baseline. Prints each table (with the
# wall time and peak memory of the run) and writes CSV files and SVG plots per scale
# under experiments/results/ (or $1). Takes about half an hour on 2 cores.
#   scripts/scales.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-experiments/results}"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q -p experiments --bin dvms-sim
mkdir -p "$out"
for scale in 0.5k 1k 2k 4k 8k; do
  echo "== scale $scale"
  target/debug/dvms-sim --scenario "experiments/scenarios/scale-$scale.toml" \
    --out "$out/scale-$scale"
done 2>&1 | tee "$out/scales.txt"
