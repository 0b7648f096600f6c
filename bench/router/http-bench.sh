#!/usr/bin/env bash
# HTTP front door capacity (docs/http.md): tiny requests (prompt "Hi", MAXTOK tokens out) against a zero-cost sim
# replica, so the front ends are the bottleneck; in one run, side by side, the binary protocol (`fastserve bench`,
# closed loop, C requests in flight) and the OpenAI-compatible HTTP API (wrk, C connections, one request each in
# flight), each straight to the replica and through a router. Rounds alternate, so drift on a shared machine hits
# all alike. Prints requests/s of each, the HTTP/binary ratio, and the latency HTTP adds (P50, P99).
# Usage: bench/router/http-bench.sh [RESULTS_DIR]   Knobs: C (32), DUR (seconds per run, 15), ROUNDS (3), MAXTOK (2),
#        WORKERS (replica worker processes, 1), WRK_THREADS (2); BASE=DIR adds a second build, DIR/fastserve (e.g. a
#        copy of dist/ from before a change), with its own replica and router, run in the same rounds right after
#        this build's runs, so both see the same drift; the load generators are this build's for both.
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
builds=(new); exe_new=$fs
[ -n "${BASE:-}" ] && { builds+=(base); exe_base=$BASE/fastserve; }
declare -A port http
http_port() { python3 -c "import json; print(json.loads(open('$1').readline())['http_port'])"; }
for b in "${builds[@]}"; do
  exe=exe_$b
  start_with "${!exe}" "$out/replica-$b.log" serve --model models/gec-small --backend sim --sim-time-scale 0 --workers "$WORKERS" --port 0 --http-port 0 --json
  port[$b-direct]=$PORT; http[$b-direct]=$(http_port "$out/replica-$b.log")
  start_with "${!exe}" "$out/router-$b.log" route --listen 0 --http-listen 0 --endpoints "127.0.0.1:$PORT" --json
  port[$b-router]=$PORT; http[$b-router]=$(http_port "$out/router-$b.log")
  for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${http[$b-router]}/ready")" = 200 ] && break; sleep 0.1; done
done

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

echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  for target in direct router; do
    for b in "${builds[@]}"; do
      "$fs" bench --port "${port[$b-$target]}" --concurrency "$C" --connections 4 --max-tokens "$MAXTOK" --prompt "Hi" --no-throttle \
        --duration "$DUR" --warmup 2 --json --out-json "$out/binary-$b-$target-$round.json" >/dev/null
      wrk -t "$WRK_THREADS" -c "$C" -d "${DUR}s" -s "$out/post.lua" "http://127.0.0.1:${http[$b-$target]}/v1/completions" | tail -1 >"$out/http-$b-$target-$round.json"
    done
  done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$out" "$ROUNDS" "${builds[@]}" <<'PY'
import json, sys, statistics
out, rounds, builds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = statistics.median
for build, target in ((b, t) for t in ("direct", "router") for b in builds):
    b = [json.load(open(f"{out}/binary-{build}-{target}-{r}.json"))["points"][0] for r in range(1, rounds + 1)]
    h = [json.load(open(f"{out}/http-{build}-{target}-{r}.json")) for r in range(1, rounds + 1)]
    if len(builds) > 1: target = f"{build} {target}"
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
