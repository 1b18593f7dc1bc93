#!/bin/bash
# Vivaldi's accuracy on real Internet latencies (RIPE Atlas country matrix) with noisy
# samples, seeds 1-20 (each seed: another held-out split and another run): a table, then
# the mean and the worst held-out median and p90 against the target (median <= 0.09,
# p90 <= 0.45). Pairs that the rest of the matrix contradicts (the accuracy tool's
# default --inconsistent-ms: 82 of 6,712, e.g. Cote d'Ivoire - Japan at 2.9 ms) are left out;
# the same seeds on every pair are reported after, for comparison. Exits non-zero if any
# seed misses the target on the consistent pairs. Used by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/country_rtt.csv.gz}
SEEDS=${SEEDS:-$(seq 1 20)}
cargo build -q -p vivaldi --example accuracy
for seed in $SEEDS; do
  # The tool's default, then every pair kept.
  for every in "" "--inconsistent-ms 0"; do
    # shellcheck disable=SC2086 # $every is zero or two words
    ./target/debug/examples/accuracy --data "$DATA" --seed "$seed" --holdout 0.2 --noise \
      $every 2>/dev/null | tail -1
  done
done | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
ok = lambda d: d["heldout_median"] <= 0.09 and d["heldout_p90"] <= 0.45
def summary(rows):
    m = [d["heldout_median"] for d in rows]; p = [d["heldout_p90"] for d in rows]
    miss = [d["seed"] for d in rows if not ok(d)]
    return ("over %d seeds: median mean %.3f worst %.3f; p90 mean %.3f worst %.3f (target <= 0.09 / <= 0.45); missed: %s"
            % (len(rows), sum(m) / len(m), max(m), sum(p) / len(p), max(p), " ".join(map(str, miss)) or "none"))
clean = [d for d in rows if d["inconsistent_ms"] > 0]
raw = [d for d in rows if d["inconsistent_ms"] == 0]
print("%-5s %-18s %-18s %s" % ("seed", "held-out med/p90", "training med/p90", "verdict"))
for d in clean:
    print("%-5d %.3f / %.3f      %.3f / %.3f      %s" % (d["seed"], d["heldout_median"], d["heldout_p90"],
          d["train_median"], d["train_p90"], "ok" if ok(d) else "missed"))
print("held-out, %d inconsistent pairs left out, %s" % (clean[0]["left_out_pairs"], summary(clean)))
print("held-out, every pair (--inconsistent-ms 0), %s" % summary(raw))
sys.exit(0 if all(ok(d) for d in clean) else 1)
'
