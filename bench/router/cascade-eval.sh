#!/usr/bin/env bash
# The gec-tiny -> gec-small cascade end to end, as clients get it (docs/router.md, "Cascade tiers"): two CPU replicas
# (FP8), a router with `tier gec gec-tiny gec-small THRESHOLD`, and `fastserve eval` over the held-out set through
# the router, naming the tier, then each model alone through the same router; the router's escalation count at the end.
# Compare with the offline `eval --cascade` table in docs/benchmarks.md.
# Usage: bench/router/cascade-eval.sh [RESULTS_DIR]   Knobs: THRESHOLD (-0.91), LIMIT (examples, 0 = all 1,200),
# CONC (requests in flight, 1: on a CPU host both replicas share the cores, so requests running on the two at once
# would inflate each other's device time, which on the CPU backend is the step's wall time).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/cascade-eval}
mkdir -p "$out"
THRESHOLD=${THRESHOLD:--0.91}; LIMIT=${LIMIT:-0}; CONC=${CONC:-1}
source bench/lib.sh
token="$out/admin-token"
echo "cascade-admin-$$" >"$token"
printf 'tier gec gec-tiny gec-small %s\n' "$THRESHOLD" >"$out/router.conf"

start "$out/tiny.log" serve --model models/gec-tiny --quantize fp8 --workers 1 --port 0 --json
tiny=$PORT
start "$out/small.log" serve --model models/gec-small --quantize fp8 --workers 1 --port 0 --json
small=$PORT
start "$out/router.log" route --listen 0 --endpoints "127.0.0.1:$tiny,127.0.0.1:$small" --admin-token-file "$token" \
  --config "$out/router.conf" --json
router=$PORT
sleep 1

for target in gec gec-tiny gec-small; do
  rm -f "$out/results-$target.jsonl"
  "$fs" eval --data tools/gec/data/test.jsonl --host 127.0.0.1 --port "$router" --server-model "$target" --limit "$LIMIT" --concurrency "$CONC" \
    --results "$out/results-$target.jsonl" --json >"$out/eval-$target.json"
  "$fs" admin --port "$router" --admin-token-file "$token" status >"$out/status-after-$target.json"
done

python3 - "$out" "$THRESHOLD" "$CONC" <<'PY'
import json, sys
out, threshold = sys.argv[1], sys.argv[2]
print(f"through the router, FP8 CPU replicas, tier threshold {threshold}, {sys.argv[3]} in flight:")
prev = 0
for t in ("gec", "gec-tiny", "gec-small"):
    d = json.load(open(f"{out}/eval-{t}.json"))
    run = [r for r in d["runs"] if r["label"].startswith("server")][0]
    esc = json.load(open(f"{out}/status-after-{t}.json"))["escalations"]
    n = d["examples"]
    lines = [json.loads(l) for l in open(f"{out}/results-{t}.jsonl") if '"device_ms"' in l]
    device = sum(l["device_ms"] for l in lines) / max(1, len(lines))
    line = (f"  {t:9}: exact match {100 * run['exact_match']:.1f} %, F0.5 {run['f05']:.3f}, "
            f"device {device:.2f} ms/request")
    if t == "gec": line += f", escalated {esc - prev} of {n} ({100 * (esc - prev) / n:.1f} %)"
    prev = esc
    print(line)
PY
