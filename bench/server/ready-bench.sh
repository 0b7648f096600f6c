#!/usr/bin/env bash
# Time to ready (issue 17): starts a replica N times and reports, per start, the milliseconds from exec to its ready
# line as measured here, and the stages the replica reports in its ready event (`start_ms`, all milliseconds from the
# supervisor's exec: its own main, spawned, listening, ready; then the engine's and the workers' own stages, see
# docs/autoscale.md), with the median, min and max of each. The page cache is warm after the first start; with
# --drop-first the first start is left out of the figures (it may read the model from disk).
# With --first-request, each start also sends one request as soon as the replica is ready, then REPEAT more of the
# same request one after another (`fastserve client --json`, end-to-end latency as the client measures it), and
# reports the first one's latency against the median of the rest. Pass --no-prefix-cache to serve so the repeats do
# not reuse the first one's KV blocks (the script prints the cached prompt tokens it saw).
# Usage: bench/server/ready-bench.sh [--first-request[=REPEAT]] [--drop-first] [N] [SERVE ARGS...]
#   e.g. bench/server/ready-bench.sh 7 --backend sim --workers 1
#        bench/server/ready-bench.sh --first-request --drop-first 6 --model /tmp/models/1b-fp8 --workers 1 --no-prefix-cache
# Environment: FIRST_PROMPT (the request's text), FIRST_TOKENS (tokens it generates, EOS ignored; default 16);
# FASTSERVE, the command that starts fastserve (default dist/fastserve), e.g. a container:
#   FASTSERVE="podman run --rm --network host -v /srv/models/1b-fp8:/models:ro fastserve:replica" \
#     bench/server/ready-bench.sh 5 --model /models --workers 1
# (needs dist/fastserve and python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
first=0; drop=0
while [ $# -gt 0 ]; do
  case "$1" in
    --first-request) first=10; shift ;;
    --first-request=*) first=${1#*=}; shift ;;
    --drop-first) drop=1; shift ;;
    *) break ;;
  esac
done
n=${1:-7}; shift || true
[ $# -gt 0 ] || set -- --backend sim --workers 1
python3 - "$n" "$first" "$drop" "$@" <<'PY'
import json, os, shlex, signal, statistics, subprocess, sys, time
n, repeat, drop, args = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
prompt = os.environ.get("FIRST_PROMPT", "Correct: She don't like apples.\nFixed:")
tokens = os.environ.get("FIRST_TOKENS", "16")
fastserve = shlex.split(os.environ.get("FASTSERVE", "dist/fastserve"))
outer, stages, firsts, steadies, cached = [], [], [], [], []

def request(port):
    out = subprocess.run(["dist/fastserve", "client", "--json", "--port", str(port), "--ignore-eos", "-n", tokens, prompt],
                         capture_output=True, text=True, timeout=120)
    r = json.loads(out.stdout)
    if r.get("status") != "ok": sys.exit(f"request failed: {out.stdout.strip()} {out.stderr.strip()}")
    return r

for i in range(n):
    t0 = time.monotonic()
    p = subprocess.Popen([*fastserve, "serve", "--port", "0", "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ev = None
    for line in p.stdout:
        if '"ready"' in line:
            t = (time.monotonic() - t0) * 1000
            ev = json.loads(line)
            break
    try:
        if ev is None: sys.exit("the replica never reported ready")
        keep = not (drop and i == 0)
        if keep:
            outer.append(t)
            stages.append(ev.get("start_ms") or {})
        if repeat > 0:
            r0 = request(ev["port"])
            rest = [request(ev["port"]) for _ in range(repeat)]
            if keep:
                firsts.append(r0["e2e_ms"])
                steadies.append(statistics.median(r["e2e_ms"] for r in rest))
                cached.append(max(r["cached_prompt_tokens"] for r in rest))
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait()

def span(v): return f"median {statistics.median(v):6.1f} ms  (min {min(v):.1f}, max {max(v):.1f})"
print(f"serve {' '.join(args)}: exec to ready line (ms): {', '.join(f'{t:.0f}' for t in outer)}; median {statistics.median(outer):.0f}")
keys = []
for s in stages:
    for k in s:
        if k not in keys: keys.append(k)
for k in keys:
    v = [s[k] for s in stages if s.get(k) is not None]
    if v: print(f"  {k:18s} {span(v)}")
    else: print(f"  {k:18s} (not reported)")
if firsts:
    ratios = [f / s for f, s in zip(firsts, steadies)]
    print(f"first request after ready, {tokens} tokens, end to end: {span(firsts)}")
    print(f"  steady (median of the next {repeat} per start): {span(steadies)}; prompt tokens served from cache: max {max(cached)}")
    print(f"  first / steady per start: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
PY
