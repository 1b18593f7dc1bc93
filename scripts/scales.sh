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
  mkdir -p "$out/scale-$scale"
  target/debug/dvms-sim --scenario "experiments/scenarios/scale-$scale.toml" \
    --out "$out/scale-$scale" | tee "$out/scale-$scale/table.txt"
done 2>&1 | tee "$out/scales.txt"

# One line per scale, from the runs' summary.csv files (the wall time, which the result
# files leave out, from the printed table).
{
  printf '%-6s %-22s %-22s %-8s %-16s %-12s\n' scale "DVMS solve mean/p95 s" "central solve mean/p95" ratio "DVMS partitions" "DVMS wall s"
  for scale in 0.5k 1k 2k 4k 8k; do
    awk -F, -v scale="$scale" '
      NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
      { for (k in col) v[$1, k] = $(col[k]) }
      END {
        d = "dvms-locality"; c = "centralized"
        printf "%-6s %-22s %-22s %-8.3f %-16s %-12.1f\n", scale,
          sprintf("%.2f / %.2f", v[d, "solve_mean_s"], v[d, "solve_p95_s"]),
          sprintf("%.2f / %.2f", v[c, "solve_mean_s"], v[c, "solve_p95_s"]),
          v[d, "solve_mean_s"] / v[c, "solve_mean_s"],
          sprintf("%.1f mean, %d max", v[d, "partition_size_mean"], v[d, "partition_size_max"]),
          wall
      }' wall="$(sed -n 's/^wall time of the dvms-locality run: \([0-9.]*\) s$/\1/p' "$out/scale-$scale/table.txt")" \
        "$out/scale-$scale/summary.csv"
  done
} | tee -a "$out/scales.txt"
