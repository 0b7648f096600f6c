#!/usr/bin/env bash
# HTTP front door capacity (docs/http.md): tiny requests (prompt "Hi", MAXTOK tokens out) against a zero-cost sim
# replica, so the front ends are the bottleneck; in one run, side by side, the binary protocol (`fastserve bench`,
# closed loop, C requests in flight) and the OpenAI-compatible HTTP API (wrk, C connections, one request each in
# flight), each straight to the replica and through a router. Rounds alternate, so drift on a shared machine hits
# all alike. Prints requests/s of each, the HTTP/binary ratio, the latency HTTP adds (P50, P99), and the server
# processes' CPU per request (replica, plus the router through it; from /proc, over the whole run, warm-up included),
# which drifts far less than requests/s when other work shares the machine.
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
declare -A port http pid
# cpu_of PID... : CPU seconds (user + system) of the processes and their children, from /proc.
cpu_of() {
  python3 - "$@" <<'PY'
import os, sys
roots, tick, total = {int(a) for a in sys.argv[1:]}, os.sysconf("SC_CLK_TCK"), 0
for e in os.listdir("/proc"):
    if not e.isdigit(): continue
    try: f = open(f"/proc/{e}/stat").read()
    except OSError: continue
    f = f[f.rindex(")") + 2:].split()
    if int(e) in roots or int(f[1]) in roots: total += int(f[11]) + int(f[12])
print(total / tick)
PY
}
http_port() { python3 -c "import json; print(json.loads(open('$1').readline())['http_port'])"; }
for b in "${builds[@]}"; do
  exe=exe_$b
  start_with "${!exe}" "$out/replica-$b.log" serve --model models/gec-small --backend sim --sim-time-scale 0 --workers "$WORKERS" --port 0 --http-port 0 --json
  port[$b-direct]=$PORT; http[$b-direct]=$(http_port "$out/replica-$b.log"); pid[$b-direct]=$LAST
  start_with "${!exe}" "$out/router-$b.log" route --listen 0 --http-listen 0 --endpoints "127.0.0.1:$PORT" --json
  port[$b-router]=$PORT; http[$b-router]=$(http_port "$out/router-$b.log"); pid[$b-router]="$LAST ${pid[$b-direct]}"
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
      c0=$(cpu_of ${pid[$b-$target]})
      "$fs" bench --port "${port[$b-$target]}" --concurrency "$C" --connections 4 --max-tokens "$MAXTOK" --prompt "Hi" --no-throttle \
        --duration "$DUR" --warmup 2 --json --out-json "$out/binary-$b-$target-$round.json" >/dev/null
      c1=$(cpu_of ${pid[$b-$target]})
      wrk -t "$WRK_THREADS" -c "$C" -d "${DUR}s" -s "$out/post.lua" "http://127.0.0.1:${http[$b-$target]}/v1/completions" | tail -1 >"$out/http-$b-$target-$round.json"
      c2=$(cpu_of ${pid[$b-$target]})
      echo "{\"binary_cpu_s\": $(python3 -c "print($c1 - $c0)"), \"http_cpu_s\": $(python3 -c "print($c2 - $c1)")}" >"$out/cpu-$b-$target-$round.json"
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
    cpu = [json.load(open(f"{out}/cpu-{build}-{target.split()[-1]}-{r}.json")) for r in range(1, rounds + 1)]
    # Binary: CPU over warm-up (2 s) and measured run, per request at the measured rate; HTTP: wrk's whole run.
    b_us = [c["binary_cpu_s"] * 1e6 / max(1, p["sent"] * (p["window_s"] + 2) / p["window_s"]) for c, p in zip(cpu, b)]
    h_us = [c["http_cpu_s"] * 1e6 / max(1, x["requests"]) for c, x in zip(cpu, h)]
    print(f"{target}: binary {', '.join(f'{v:.0f}' for v in b_rps)} req/s; HTTP {', '.join(f'{v:.0f}' for v in h_rps)} req/s "
          f"(non-2xx or socket errors: {bad}); ratio HTTP/binary (median of rounds) {med([y / x for x, y in zip(b_rps, h_rps)]):.2f}")
    print(f"{target}: P50 binary {med(b50):.3f} ms, HTTP {med(h50):.3f} ms, added {med([y - x for x, y in zip(b50, h50)]):.3f} ms; "
          f"P99 binary {med(b99):.3f} ms, HTTP {med(h99):.3f} ms, added {med([y - x for x, y in zip(b99, h99)]):.3f} ms")
    print(f"{target}: server CPU per request, binary {', '.join(f'{v:.1f}' for v in b_us)} µs; HTTP {', '.join(f'{v:.1f}' for v in h_us)} µs "
          f"(medians {med(b_us):.1f} and {med(h_us):.1f})")
PY
