#!/usr/bin/env bash
# Load-balancing quality (docs/router.md): N simulated replicas behind a router, one of them degraded, at a fixed
# share of the fleet's capacity; P99 end-to-end for each policy, side by side in one run, plus a chart.
#   Scenario "slow":  one replica runs 3x slower (--sim-time-scale 3).
#   Scenario "stall": one replica freezes for 2 s now and then (--sim-stall-every 4 --sim-stall-ms 2000).
# Usage: bench/router/balance-bench.sh [RESULTS_DIR]   (needs dist/fastserve and python3)
# Knobs: N (replicas, 4), LOAD (share of capacity, 0.7), DUR (seconds per point, 30), SEQS (sequences per replica, 4).
# Writes RESULTS_DIR/balance.png: P50 and P99 per policy and scenario (fastserve chart).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/balance-bench}
mkdir -p "$out"
N=${N:-4}; LOAD=${LOAD:-0.7}; DUR=${DUR:-30}; SEQS=${SEQS:-4}
# Few sequences per replica keep each replica's capacity small, so the simulated devices (not this machine's cores)
# are the bottleneck and the router's choices decide the latency.
common=(--backend sim --workers 1 --max-seqs "$SEQS" --json)
source bench/lib.sh

# Capacity of one healthy replica: closed loop far past its batch size, 10 s.
start "$out/cap.log" serve --port 0 "${common[@]}"
"$fs" bench --port "$PORT" --concurrency $((SEQS * 8)) --duration 10 --warmup 2 --json --out-json "$out/capacity.json" >/dev/null
stop "$LAST"
one=$(json "$out/capacity.json" "d['points'][0]['achieved_rps']")
echo "one healthy replica: $one req/s (closed loop, $((SEQS * 8)) in flight)"

for scenario in slow stall; do
  case $scenario in
    slow)  bad=(--sim-time-scale 3); units=$(python3 -c "print($N - 1 + 1/3)") ;;
    stall) bad=(--sim-stall-every 4 --sim-stall-ms 2000); units=$(python3 -c "print($N - 1 + 0.67)") ;;
  esac
  rate=$(python3 -c "print(round($LOAD * $units * $one, 1))")
  ports=()
  for i in $(seq "$N"); do
    if [ "$i" -eq 1 ]; then start "$out/$scenario-r$i.log" serve --port 0 "${common[@]}" "${bad[@]}"
    else start "$out/$scenario-r$i.log" serve --port 0 "${common[@]}"; fi
    ports+=("$PORT")
  done
  eps=$(printf '127.0.0.1:%s,' "${ports[@]}"); eps=${eps%,}
  echo "== scenario $scenario: $N replicas (replica 1: ${bad[*]}), offered $rate req/s = $LOAD x $units x $one"
  for policy in round-robin random p2c least-loaded; do
    start "$out/$scenario-router-$policy.log" route --listen 0 --endpoints "$eps" --policy "$policy" --slow-start-ms 0 --json
    "$fs" bench --port "$PORT" --rate "$rate" --duration "$DUR" --warmup 3 --json --out-json "$out/$scenario-$policy.json" >/dev/null
    stop "$LAST"
    # A P99 of null means requests were still unfinished at the drain limit: infinitely late.
    echo "$scenario $policy: $(json "$out/$scenario-$policy.json" "'achieved %.1f req/s, P50 %.0f ms, P99 %s ms, errors %s' % (d['points'][0]['achieved_rps'], d['points'][0]['e2e_ms']['p50'], '∞' if d['points'][0]['e2e_ms']['p99'] is None else '%.0f' % d['points'][0]['e2e_ms']['p99'], d['points'][0].get('errors', {}))")"
  done
  _bench_cleanup; pids=()
done

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for sc in ("slow", "stall"):
    p99 = {pol: json.load(open(f"{out}/{sc}-{pol}.json"))["points"][0]["e2e_ms"]["p99"] for pol in ("round-robin", "random", "p2c", "least-loaded")}
    p99 = {k: float("inf") if v is None else v for k, v in p99.items()}
    print(f"{sc}: P99 ms " + ", ".join(f"{k} {v:.0f}" for k, v in p99.items())
          + f"; p2c/round-robin {p99['p2c']/p99['round-robin']:.2f} (target <= 0.5), p2c/least-loaded {p99['p2c']/p99['least-loaded']:.2f} (target <= 1.1)")
PY

labels=()
for sc in slow stall; do for pol in round-robin random p2c least-loaded; do labels+=("$sc/$pol=$out/$sc-$pol.json"); done; done
"$fs" chart --out "$out/balance.png" --title "$N sim replicas, one degraded, at $LOAD of capacity: end-to-end latency by policy" "${labels[@]}"
