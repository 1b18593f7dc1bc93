#!/bin/bash
# Vivaldi's accuracy on real Internet latencies (RIPE Atlas country matrix), seeds 1-3,
# against the target of issue 3: held-out median <= 0.09 and p90 <= 0.45 with --noise.
# Prints a table; exits non-zero if a seed misses. Used by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/country_rtt.csv.gz}
cargo build -q -p vivaldi --example accuracy
fail=0
printf '%-5s %-16s %-16s %s\n' seed "held-out med/p90" "training med/p90" verdict
for seed in 1 2 3; do
  line=$(./target/debug/examples/accuracy --data "$DATA" --seed "$seed" --holdout 0.2 --noise 2>/dev/null | tail -1)
  verdict=$(python3 - "$line" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
ok = d["heldout_median"] <= 0.09 and d["heldout_p90"] <= 0.45
print("%.3f / %.3f    %.3f / %.3f    %s" % (d["heldout_median"], d["heldout_p90"], d["train_median"], d["train_p90"], "ok" if ok else "MISSED"))
PY
)
  printf '%-5s %s\n' "$seed" "$verdict"
  [[ $verdict == *MISSED* ]] && fail=1
done
exit $fail
