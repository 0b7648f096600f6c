#!/usr/bin/env bash
# The router's traffic rules under load (docs/router.md, "Models, versions and traffic"), on sim replicas:
#  1. shadow overhead: the same load through the router with the shadow mirror off and at 100 %, rounds alternated,
#     side by side; what the clients' P50/P99 gain is the mirror's cost (target: P99 within 0.5 ms). On a machine
#     whose cores the shadow replica shares, most of that is the shadow replica's own work, so a third mode, `load`,
#     runs the mirror off while a second client sends the shadow replica the same load directly: `on` against `load`
#     is what the router's mirroring adds;
#  2. canary rollback: a split sends SHARE % to a canary that is SLOW times slower; the time from the split command to
#     the router's canary_rollback event (target: within 30 s).
# Usage: bench/router/traffic-bench.sh [RESULTS_DIR]
# Knobs: RATE (req/s, 200), DUR (seconds per shadow round, 15), CONNS (16), SHARE (canary %, 10), SLOW (canary's sim
# time scale over the stable one's, 10), TOKENS (max tokens, 16), ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/router-traffic}
mkdir -p "$out"
RATE=${RATE:-200}; DUR=${DUR:-15}; CONNS=${CONNS:-16}; SHARE=${SHARE:-10}; SLOW=${SLOW:-10}; TOKENS=${TOKENS:-16}; ROUNDS=${ROUNDS:-3}
source bench/lib.sh
token="$out/admin-token"
echo "bench-admin-$$" >"$token"
admin() { "$fs" admin --port "$router" --admin-token-file "$token" "$@" >/dev/null; }

start "$out/v1.log" serve --backend sim --workers 1 --port 0 --model-name gec --model-version v1 --json
v1=$PORT
start "$out/v2.log" serve --backend sim --workers 1 --port 0 --model-name gec --model-version v2 --json
v2=$PORT; v2pid=$LAST
start "$out/router.log" route --listen 0 --endpoints "127.0.0.1:$v1,127.0.0.1:$v2" --admin-token-file "$token" \
  --shadow-log "$out/shadow.jsonl" --json
router=$PORT; rpid=$LAST
sleep 1
admin split gec v1=100,v2=0

# 1. Shadow overhead.
for round in $(seq "$ROUNDS"); do
  for mode in off load on; do
    if [ "$mode" = on ]; then admin shadow gec v2 100; else admin shadow gec off; fi
    direct=""
    if [ "$mode" = load ]; then
      "$fs" bench --port "$v2" --rate "$RATE" --connections "$CONNS" --max-tokens "$TOKENS" --duration "$((DUR + 2))" --warmup 0 \
        --json --out-json "$out/shadow-direct-$round.json" >/dev/null &
      direct=$!
    fi
    "$fs" bench --port "$router" --rate "$RATE" --connections "$CONNS" --max-tokens "$TOKENS" --duration "$DUR" --warmup 2 \
      --json --out-json "$out/shadow-$mode-$round.json" >/dev/null
    [ -n "$direct" ] && wait "$direct"
  done
done
admin shadow gec off
"$fs" admin --port "$router" --admin-token-file "$token" status >"$out/status-after-shadow.json"

# 2. Canary rollback: a slow canary takes SHARE % until the router rolls it back.
stop "$rpid"; stop "$v2pid"
start "$out/v2-slow.log" serve --backend sim --workers 1 --port 0 --model-name gec --model-version v2 --sim-time-scale "$SLOW" --json
v2=$PORT
start "$out/router2.log" route --listen 0 --endpoints "127.0.0.1:$v1,127.0.0.1:$v2" --admin-token-file "$token" --json
router=$PORT
sleep 1
"$fs" bench --port "$router" --rate "$RATE" --connections "$CONNS" --max-tokens "$TOKENS" --duration 60 --warmup 0 \
  --json --out-json "$out/canary-load.json" >/dev/null &
load=$!
sleep 3
t0=$(date +%s.%N)
admin split gec "v1=$((100 - SHARE)),v2=$SHARE"
rolled=""
for _ in $(seq 600); do
  if grep -q '"event":"canary_rollback"' "$out/router2.log"; then rolled=$(date +%s.%N); break; fi
  sleep 0.1
done
kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true

python3 - "$out" "$t0" "${rolled:-}" "$RATE" "$SHARE" "$SLOW" "$ROUNDS" <<'PY'
import json, sys, statistics
out, t0, rolled, rate, share, slow, rounds = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7])
def e2e(mode, r, key):
    return json.load(open(f"{out}/shadow-{mode}-{r}.json"))["points"][0]["e2e_ms"][key]
print(f"shadow mirror at 100 % of {rate} req/s (sim replicas on this machine's cores), {rounds} rounds:")
for key in ("p50", "p99"):
    v = {m: [e2e(m, r, key) for r in range(1, rounds + 1)] for m in ("off", "load", "on")}
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    print(f"  {key}: off {fmt(v['off'])} ms; off + shadow replica loaded directly {fmt(v['load'])} ms; on {fmt(v['on'])} ms")
    print(f"       on - off (median of rounds) {statistics.median([b - a for a, b in zip(v['off'], v['on'])]):.2f} ms; "
          f"on - load (the router's mirroring) {statistics.median([b - a for a, b in zip(v['load'], v['on'])]):.2f} ms")
st = json.load(open(f"{out}/status-after-shadow.json"))
print(f"  shadow dropped: {st['shadow_dropped']}")
if rolled:
    ev = [json.loads(l) for l in open(f"{out}/router2.log") if '"canary_rollback"' in l][0]
    print(f"canary at {share} % of {rate} req/s, {slow}x slower: rolled back {float(rolled) - t0:.1f} s after the split: {ev['detail']}")
else:
    print(f"canary at {share} % of {rate} req/s, {slow}x slower: NOT rolled back within 60 s")
PY
