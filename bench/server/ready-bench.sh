#!/usr/bin/env bash
# Time to ready (issue 17): starts a replica N times and reports, per start, the milliseconds from exec to its ready
# line as measured here, and the stages the replica reports in its ready event (`start_ms`: main, spawned,
# listening, ready, all from exec), with their medians. The page cache is warm after the first start.
# Usage: bench/server/ready-bench.sh [N] [SERVE ARGS...]   e.g. bench/server/ready-bench.sh 7 --backend sim --workers 1
# (needs dist/fastserve and python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-7}; shift || true
[ $# -gt 0 ] || set -- --backend sim --workers 1
python3 - "$n" "$@" <<'PY'
import json, signal, statistics, subprocess, sys, time
n, args = int(sys.argv[1]), sys.argv[2:]
outer, stages = [], []
for _ in range(n):
    t0 = time.monotonic()
    p = subprocess.Popen(["dist/fastserve", "serve", "--port", "0", "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if '"ready"' in line:
            outer.append((time.monotonic() - t0) * 1000)
            stages.append(json.loads(line).get("start_ms") or {})
            break
    p.send_signal(signal.SIGTERM)
    p.wait()
if not outer: sys.exit("the replica never reported ready")
print(f"serve {' '.join(args)}: exec to ready line (ms): {', '.join(f'{t:.0f}' for t in outer)}; median {statistics.median(outer):.0f}")
for k in ("main", "spawned", "listening", "ready"):
    v = [s[k] for s in stages if s.get(k) is not None]
    if v: print(f"  {k:9s} median {statistics.median(v):5.0f} ms  (min {min(v):.0f}, max {max(v):.0f})")
PY
