#!/usr/bin/env bash
# Overload (issue 16's table): one simulated replica of known capacity, offered 1x, 2x, 3x and 10x that capacity
# open loop, with a 1 s deadline per request and without one, then 3 replicas behind a router at 3x theirs. For each
# point: achieved ok req/s, goodput (ok within the SLO), requests ended deadline_exceeded, overloaded (refused by the
# server) and throttled (refused by the client), P99 end-to-end of the requests the server admitted, the latency of
# the server's refusals, and the peak RSS of the replica's supervisor, engine and worker (VmHWM; the replica is started
# afresh for every point). The replica points run with the client's adaptive throttling off, so that they measure
# the replica alone; one more point at 10x has it on (fastserve bench's default). The router point reports requests
# sent to replicas over requests received (retry amplification).
# Usage: bench/server/overload-bench.sh [RESULTS_DIR]   (needs dist/fastserve and python3)
# Knobs: SCALE (--sim-time-scale, 10: about 170 req/s of capacity), CAP (req/s; measured by a sweep when unset),
#        MULTS ("1 2 3 10"), DUR (measured seconds per point, 10), DEADLINE_MS (1000), DEADLINES ("$DEADLINE_MS 0",
#        0 = none), THROTTLED (1: the throttled-client point), ROUTER (1: the router point).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/overload-bench}
mkdir -p "$out"
source bench/lib.sh
SCALE=${SCALE:-10}; MULTS=${MULTS:-"1 2 3 10"}; DUR=${DUR:-10}; DEADLINE_MS=${DEADLINE_MS:-1000}; ROUTER=${ROUTER:-1}
DEADLINES=${DEADLINES:-"$DEADLINE_MS 0"}; THROTTLED=${THROTTLED:-1}
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
  "$fs" bench --port "$PORT" --no-throttle --sweep --sweep-start 50 --sweep-factor 1.5 --duration 6 --warmup 2 --slo-ms 1000 \
    --deadline-ms "$DEADLINE_MS" --json --out-json "$out/capacity.json" >/dev/null
  stop "$LAST"
  CAP=$(json "$out/capacity.json" "round((d.get('best') or {}).get('achieved_rps', 0))")
  [ "$CAP" -gt 0 ] || { echo "no rate met the SLO" >&2; exit 1; }
fi
echo "capacity: $CAP req/s (sim time scale $SCALE, 1 worker)"

: >"$out/points.csv"
point() { # NAME THROTTLE(on|off) DEADLINE_MS MULT
  local name=$1 throttle=$2 deadline=$3 m=$4 rate=$((CAP * $4)) flags=()
  [ "$throttle" = off ] && flags+=(--no-throttle)
  start "$out/serve-$name.log" "${replica[@]}"
  "$fs" bench --port "$PORT" --rate "$rate" --duration "$DUR" --warmup 2 --drain 5 --slo-ms 1000 --deadline-ms "$deadline" \
    "${flags[@]}" --json --out-json "$out/point-$name.json" >/dev/null
  rss=$(peak_rss "$LAST")
  stop "$LAST"
  echo "$name,replica,$throttle,$deadline,$m,$rate,$CAP,$rss" >>"$out/points.csv"
  echo "  $name: $(json "$out/point-$name.json" "'goodput %.0f req/s' % d['points'][0]['goodput_rps']")"
}
for deadline in $DEADLINES; do
  for m in $MULTS; do point "$m-$deadline" off "$deadline" "$m"; done
done
[ "$THROTTLED" = 1 ] && point "10-$DEADLINE_MS-throttled" on "$DEADLINE_MS" 10

if [ "$ROUTER" = 1 ]; then
  # Three replicas behind a router at 3x their summed capacity: the router must not amplify the overload with retries.
  ports=()
  for i in 1 2 3; do start "$out/fleet-r$i.log" "${replica[@]}"; ports+=("$PORT"); done
  eps=$(printf '127.0.0.1:%s,' "${ports[@]}"); eps=${eps%,}
  start "$out/fleet-router.log" route --listen 0 --endpoints "$eps" --slow-start-ms 0 --json
  router=$LAST
  rate=$((CAP * 9))
  "$fs" bench --port "$PORT" --rate "$rate" --duration "$DUR" --warmup 2 --drain 5 --slo-ms 1000 --deadline-ms "$DEADLINE_MS" \
    --no-throttle --json --out-json "$out/point-router.json" >/dev/null
  router_rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$router/status")
  stop "$router"
  _bench_cleanup; pids=()
  echo "router,router,off,$DEADLINE_MS,3,$rate,$((CAP * 3)),router $router_rss" >>"$out/points.csv"
fi

python3 - "$out" <<'PY'
import csv, json, sys
out = sys.argv[1]
print("| replicas | client throttle | deadline | offered | achieved ok | goodput | goodput / capacity | deadline_exceeded | overloaded | throttled | other errors | P99 admitted (ms) | refusal P50 / P99 (ms) | peak RSS MiB (supervisor / engine / worker; router) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
ms = lambda v: "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.2f}"
for name, kind, throttle, deadline, m, rate, cap, rss in csv.reader(open(f"{out}/points.csv")):
    p = json.load(open(f"{out}/point-{name}.json"))["points"][0]
    errs = dict(p.get("errors") or {})
    dl, ov, th = errs.pop("deadline_exceeded", 0), errs.pop("overloaded", 0), errs.pop("throttled", 0)
    other = sum(errs.values())  # unfinished included
    p99 = "> drain" if p["p99_admitted_ms"] is None and p["admitted"] > 0 else ms(p["p99_admitted_ms"])
    rej = f"{ms(p['rejection_p50_ms'])} / {ms(p['rejection_p99_ms'])}" if p["rejections"] else "-"
    reps = "1" if kind == "replica" else "3 + router"
    rss = " / ".join(rss.split()) if kind == "replica" else rss
    print(f"| {reps} | {throttle} | {deadline + ' ms' if deadline != '0' else 'none'} | {rate} req/s ({m}x) | {p['achieved_rps']:.0f} | {p['goodput_rps']:.0f} | "
          f"{p['goodput_rps'] / float(cap):.2f} | {dl} | {ov} | {th} | {other} | {p99} | {rej} | {rss} |")
PY
if [ "$ROUTER" = 1 ]; then
  python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
ev = [json.loads(l) for l in open(f"{out}/fleet-router.log") if '"stopped"' in l][0]
sent = sum(e["forwarded"] for e in ev["endpoints"])
print(f"router: {ev['requests']} requests received, {sent} sent to replicas ({sent / max(1, ev['requests']):.3f}x), "
      f"{ev['retries']} retries, {ev['retry_budget_exhausted']} refusals passed on for want of retry budget, "
      f"{ev['upstream_overloaded']} overloaded answers from replicas")
PY
fi
