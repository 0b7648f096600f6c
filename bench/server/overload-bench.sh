#!/usr/bin/env bash
# Overload (issue 16's table): one simulated replica of known capacity, offered 1x, 2x, 3x and 10x that capacity
# open loop, with a 1 s deadline per request and without one. For each point: achieved ok req/s, goodput (ok within
# the SLO), requests ended deadline_exceeded and overloaded, P99 end-to-end (bench's: every request sent), and the
# peak RSS of the replica's supervisor, engine and worker (VmHWM; the replica is started afresh for every point).
# Usage: bench/server/overload-bench.sh [RESULTS_DIR]   (needs dist/fastserve and python3)
# Knobs: SCALE (--sim-time-scale, 10: about 175 req/s of capacity), CAP (req/s; measured by a sweep when unset),
#        MULTS ("1 2 3 10"), DUR (measured seconds per point, 10), DEADLINE_MS (1000).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/overload-bench}
mkdir -p "$out"
source bench/lib.sh
SCALE=${SCALE:-10}; MULTS=${MULTS:-"1 2 3 10"}; DUR=${DUR:-10}; DEADLINE_MS=${DEADLINE_MS:-1000}
replica=(serve --backend sim --sim-time-scale "$SCALE" --workers 1 --port 0 --json)

# Peak RSS (MiB) of the replica's processes: the supervisor and its children (serve-engine, serve-worker).
peak_rss() { # supervisor pid -> "supervisor engine worker"
  python3 - "$1" <<'PY'
import os, sys
sup = int(sys.argv[1])
def hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024
    return 0.0
def children(pid):
    try: return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError: return []
roles = {"engine": 0.0, "worker": 0.0}
for c in children(sup):
    cmd = open(f"/proc/{c}/cmdline").read().split("\0")
    role = "engine" if "serve-engine" in cmd else "worker" if "serve-worker" in cmd else None
    if role: roles[role] = max(roles[role], hwm(c))
print(f"{hwm(sup):.0f} {roles['engine']:.0f} {roles['worker']:.0f}")
PY
}

if [ -z "${CAP:-}" ]; then
  echo "== capacity: highest rate with P99 end-to-end < 1 s and a ${DEADLINE_MS} ms deadline (sweep)"
  start "$out/cap.log" "${replica[@]}"
  "$fs" bench --port "$PORT" --sweep --sweep-start 50 --sweep-factor 1.5 --duration 6 --warmup 2 --slo-ms 1000 \
    --deadline-ms "$DEADLINE_MS" --json --out-json "$out/capacity.json" >/dev/null
  stop "$LAST"
  CAP=$(json "$out/capacity.json" "round((d.get('best') or {}).get('achieved_rps', 0))")
  [ "$CAP" -gt 0 ] || { echo "no rate met the SLO" >&2; exit 1; }
fi
echo "capacity: $CAP req/s (sim time scale $SCALE, 1 worker)"

: >"$out/points.csv"
for deadline in "$DEADLINE_MS" 0; do
  for m in $MULTS; do
    rate=$((CAP * m))
    start "$out/serve-$m-$deadline.log" "${replica[@]}"
    "$fs" bench --port "$PORT" --rate "$rate" --duration "$DUR" --warmup 2 --drain 5 --slo-ms 1000 --deadline-ms "$deadline" \
      --json --out-json "$out/point-$m-$deadline.json" >/dev/null
    rss=$(peak_rss "$LAST")
    stop "$LAST"
    echo "$m,$deadline,$rate,$rss" >>"$out/points.csv"
  done
done

python3 - "$out" "$CAP" <<'PY'
import csv, json, sys
out, cap = sys.argv[1], float(sys.argv[2])
# P99 end-to-end is fastserve bench's: over every request sent, refused ones included, an unfinished one counting as
# endless ("> drain" when more than 1 % never finished).
print(f"| deadline | offered | achieved ok | goodput | goodput / capacity | deadline_exceeded | overloaded | other errors | P99 end-to-end (ms) | peak RSS MiB (supervisor / engine / worker) |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for m, deadline, rate, rss in csv.reader(open(f"{out}/points.csv")):
    p = json.load(open(f"{out}/point-{m}-{deadline}.json"))["points"][0]
    errs = dict(p.get("errors") or {})
    dl, ov = errs.pop("deadline_exceeded", 0), errs.pop("overloaded", 0)
    other = sum(errs.values())  # unfinished included
    sup, eng, wrk = rss.split()
    p99 = "> drain" if p["e2e_ms"]["p99"] is None else f"{p['e2e_ms']['p99']:.0f}"
    print(f"| {deadline + ' ms' if deadline != '0' else 'none'} | {rate} req/s ({m}x) | {p['achieved_rps']:.0f} | {p['goodput_rps']:.0f} | "
          f"{p['goodput_rps'] / cap:.2f} | {dl} | {ov} | {other} | {p99} | {sup} / {eng} / {wrk} |")
PY
