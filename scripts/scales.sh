#!/usr/bin/env bash
# The simulator at the seeds' scales: 64 hosts / 640 VMs, then 500 / 5,000 up to
# 8,000 / 80,000, one virtual hour each, every host running its own overlay, 1 % message
# loss and a crash per host every 6 h: DVMS against the centralized baseline. Prints each
# table (with the wall time and peak memory of the run), writes CSV files and SVG plots
# per scale under experiments/results/ (or $1), then one line per scale: time to solve,
# and what the overlay costs each node and how fast it forgets a crashed host. About
# 25 minutes on this 2-core machine (the 8k run alone about 9).
#   scripts/scales.sh [OUT_DIR] [SCALES...]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-experiments/results}"
shift || true
scales=("${@:-64 0.5k 1k 2k 4k 8k}")
read -r -a scales <<< "${scales[*]}"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q --release -p experiments --bin dvms-sim
mkdir -p "$out"
for scale in "${scales[@]}"; do
  echo "== scale $scale"
  mkdir -p "$out/scale-$scale"
  target/release/dvms-sim --scenario "experiments/scenarios/scale-$scale.toml" \
    --out "$out/scale-$scale" | tee "$out/scale-$scale/table.txt"
done 2>&1 | tee "$out/scales.txt"

# One line per scale, from the runs' summary.csv files (the wall time and peak memory,
# which the result files leave out, from the printed table).
{
  printf '%-6s %-18s %-18s %-6s %-10s %-11s %-12s %-9s %-8s %-8s\n' scale "DVMS solve mean/p95" "central mean/p95" ratio "B/node/s" "msg/node/s" "unlisted p50/p99" "false fail" "wall s" "peak MiB"
  for scale in "${scales[@]}"; do
    t="$out/scale-$scale/table.txt"
    awk -F, -v scale="$scale" '
      NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
      { for (k in col) v[$1, k] = $(col[k]) }
      END {
        d = "dvms-locality"; c = "centralized"
        printf "%-6s %-18s %-18s %-6.3f %-10.0f %-11.2f %-12s %-9s %-8.1f %-8s\n", scale,
          sprintf("%.2f / %.2f", v[d, "solve_mean_s"], v[d, "solve_p95_s"]),
          sprintf("%.2f / %.2f", v[c, "solve_mean_s"], v[c, "solve_p95_s"]),
          v[d, "solve_mean_s"] / v[c, "solve_mean_s"],
          v[d, "overlay_bytes_per_node_s"], v[d, "overlay_messages_per_node_s"],
          sprintf("%.1f / %.1f", v[d, "crash_detection_p50_s"], v[d, "crash_detection_p99_s"]),
          v[d, "false_failures"], wall, peak
      }' wall="$(sed -n 's/^wall time of the dvms-locality run: \([0-9.]*\) s$/\1/p' "$t")" \
        peak="$(sed -n 's/^peak memory: \([0-9]*\) MiB$/\1/p' "$t")" \
        "$out/scale-$scale/summary.csv"
  done
} | tee -a "$out/scales.txt"
