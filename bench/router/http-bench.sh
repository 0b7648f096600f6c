#!/usr/bin/env bash
# HTTP front door capacity (docs/http.md): tiny requests (prompt "Hi", MAXTOK tokens out) against a zero-cost sim
# replica, so the front ends are the bottleneck; in one run, side by side, the binary protocol (`fastserve bench`,
# closed loop, C requests in flight) and the OpenAI-compatible HTTP API (wrk, C connections, one request each in
# flight), each straight to the replica and through a router. Rounds alternate, so drift on a shared machine hits
# all alike. Prints requests/s of each, the HTTP/binary ratio, and the latency HTTP adds (P50, P99).
# Usage: bench/router/http-bench.sh [RESULTS_DIR]   Knobs: C (32), DUR (seconds per run, 15), ROUNDS (3), MAXTOK (2),
#        WORKERS (replica worker processes, 1), WRK_THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/http-bench}
mkdir -p "$out"
C=${C:-32}; DUR=${DUR:-15}; ROUNDS=${ROUNDS:-3}; MAXTOK=${MAXTOK:-2}; WORKERS=${WORKERS:-1}; WRK_THREADS=${WRK_THREADS:-2}
if ! command -v wrk >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk; }
fi
source bench/lib.sh
start "$out/replica.log" serve --backend sim --sim-time-scale 0 --workers "$WORKERS" --port 0 --http-port 0 --json
replica=$PORT; replica_http=$(python3 -c "import json; print(json.loads(open('$out/replica.log').readline())['http_port'])")
start "$out/router.log" route --listen 0 --http-listen 0 --endpoints "127.0.0.1:$replica" --json
router=$PORT; router_http=$(python3 -c "import json; print(json.loads(open('$out/router.log').readline())['http_port'])")
for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$router_http/ready")" = 200 ] && break; sleep 0.1; done

# wrk's Lua: one POST body for every request; done() prints one JSON line (latency in µs).
cat >"$out/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"prompt":"Hi","max_tokens":$MAXTOK,"temperature":0}'
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
LUA

for round in $(seq "$ROUNDS"); do
  for target in direct router; do
    port=$replica; http=$replica_http
    [ "$target" = router ] && { port=$router; http=$router_http; }
    "$fs" bench --port "$port" --concurrency "$C" --connections 4 --max-tokens "$MAXTOK" --prompt "Hi" --no-throttle \
      --duration "$DUR" --warmup 2 --json --out-json "$out/binary-$target-$round.json" >/dev/null
    wrk -t "$WRK_THREADS" -c "$C" -d "${DUR}s" -s "$out/post.lua" "http://127.0.0.1:$http/v1/completions" | tail -1 >"$out/http-$target-$round.json"
  done
done

python3 - "$out" "$ROUNDS" <<'PY'
import json, sys, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
med = statistics.median
for target in ("direct", "router"):
    b = [json.load(open(f"{out}/binary-{target}-{r}.json"))["points"][0] for r in range(1, rounds + 1)]
    h = [json.load(open(f"{out}/http-{target}-{r}.json")) for r in range(1, rounds + 1)]
    b_rps = [p["achieved_rps"] for p in b]
    h_rps = [x["requests"] / (x["duration_us"] / 1e6) for x in h]
    b50, b99 = [p["e2e_ms"]["p50"] for p in b], [p["e2e_ms"]["p99"] for p in b]
    h50, h99 = [x["p50_us"] / 1000 for x in h], [x["p99_us"] / 1000 for x in h]
    bad = sum(x["non2xx"] + x["socket_errors"] for x in h)
    print(f"{target}: binary {', '.join(f'{v:.0f}' for v in b_rps)} req/s; HTTP {', '.join(f'{v:.0f}' for v in h_rps)} req/s "
          f"(non-2xx or socket errors: {bad}); ratio HTTP/binary (median of rounds) {med([y / x for x, y in zip(b_rps, h_rps)]):.2f}")
    print(f"{target}: P50 binary {med(b50):.3f} ms, HTTP {med(h50):.3f} ms, added {med([y - x for x, y in zip(b50, h50)]):.3f} ms; "
          f"P99 binary {med(b99):.3f} ms, HTTP {med(h99):.3f} ms, added {med([y - x for x, y in zip(b99, h99)]):.3f} ms")
PY
