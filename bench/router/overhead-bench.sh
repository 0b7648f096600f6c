#!/usr/bin/env bash
# Router overhead (docs/router.md): tiny requests (1 token in, 1 out) at a fixed rate against one zero-cost sim
# replica, directly and through a router, side by side in one run; the added latency is the difference.
# Usage: bench/router/overhead-bench.sh [RESULTS_DIR]   Knobs: RATE (req/s, 2000), DUR (seconds, 15), CONNS (16).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/router-overhead}
mkdir -p "$out"
RATE=${RATE:-2000}; DUR=${DUR:-15}; CONNS=${CONNS:-16}
source bench/lib.sh
start "$out/replica.log" serve --backend sim --sim-time-scale 0 --workers 1 --port 0 --json
replica=$PORT
start "$out/router.log" route --listen 0 --endpoints "127.0.0.1:$replica" --json
router=$PORT
for round in 1 2; do   # alternate, so drift on a shared machine hits both alike
  for target in direct router; do
    port=$replica; [ "$target" = router ] && port=$router
    "$fs" bench --port "$port" --rate "$RATE" --connections "$CONNS" --max-tokens 1 --prompt "Hi" --no-text \
      --duration "$DUR" --warmup 2 --json --out-json "$out/$target-$round.json" >/dev/null
  done
done
python3 - "$out" <<'PY'
import json, sys, statistics
out = sys.argv[1]
def pct(target, key):
    return [json.load(open(f"{out}/{target}-{r}.json"))["points"][0]["e2e_ms"][key] for r in (1, 2)]
for key in ("p50", "p99"):
    d, r = pct("direct", key), pct("router", key)
    print(f"{key}: direct {', '.join(f'{x:.3f}' for x in d)} ms; through the router {', '.join(f'{x:.3f}' for x in r)} ms; "
          f"added (median of rounds) {statistics.median([b - a for a, b in zip(d, r)]):.3f} ms")
PY
