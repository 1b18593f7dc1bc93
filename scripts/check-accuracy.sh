#!/bin/bash
# Vivaldi's accuracy on real Internet latencies (RIPE Atlas country matrix) with noisy
# samples, seeds 1-20 (each seed: another held-out split and another run): a table, then
# the mean and the worst held-out median and p90 against the target (median <= 0.09,
# p90 <= 0.45). Exits non-zero if seeds 1-3 miss the target (a regression gate); the
# worst over 1-20 is reported, not gated: it misses (see vivaldi/README.md).
# Used by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/country_rtt.csv.gz}
SEEDS=${SEEDS:-$(seq 1 20)}
cargo build -q -p vivaldi --example accuracy
for seed in $SEEDS; do
  ./target/debug/examples/accuracy --data "$DATA" --seed "$seed" --holdout 0.2 --noise 2>/dev/null | tail -1
done | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
ok = lambda d: d["heldout_median"] <= 0.09 and d["heldout_p90"] <= 0.45
print("%-5s %-18s %-18s %s" % ("seed", "held-out med/p90", "training med/p90", "verdict"))
for d in rows:
    print("%-5d %.3f / %.3f      %.3f / %.3f      %s" % (d["seed"], d["heldout_median"], d["heldout_p90"],
          d["train_median"], d["train_p90"], "ok" if ok(d) else "missed"))
m = [d["heldout_median"] for d in rows]; p = [d["heldout_p90"] for d in rows]
print("held-out over %d seeds: median mean %.3f worst %.3f; p90 mean %.3f worst %.3f (target <= 0.09 / <= 0.45)"
      % (len(rows), sum(m) / len(m), max(m), sum(p) / len(p), max(p)))
gate = [d for d in rows if d["seed"] <= 3]
sys.exit(0 if all(ok(d) for d in gate) else 1)
'
