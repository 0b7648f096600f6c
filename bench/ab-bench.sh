#!/usr/bin/env bash
# Two builds side by side in one run, for a change that must not cost speed: frontend capacity (1 token in, 1 out,
# zero-cost sim replica, closed loop over CONNS connections, K=1 and K=2 workers: bench/server/replica-bench.sh part 1)
# and router overhead (fixed RATE through a router minus direct, P50 and P99: bench/router/overhead-bench.sh).
# Each round measures A then B then B then A, so the drift of a shared machine hits both alike; per-round ratios
# B/A and their spread (the run-to-run noise) are printed at the end.
# Usage: bench/ab-bench.sh A_FASTSERVE B_FASTSERVE [RESULTS_DIR]
#   e.g. bench/ab-bench.sh /tmp/old/dist/fastserve dist/fastserve
# Knobs: ROUNDS (3), CONNS (32), DUR (5 s per capacity point), RATE (2000 req/s), RDUR (8 s per overhead point).
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,9p "$0" >&2; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2")
cd "$(dirname "$0")/.."
out=${3:-build/ab-bench}
mkdir -p "$out"
ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-32}; DUR=${DUR:-5}; RATE=${RATE:-2000}; RDUR=${RDUR:-8}
for f in "$A" "$B"; do [ -x "$f" ] || { echo "not an executable: $f" >&2; exit 2; }; done
source bench/lib.sh

capacity() { # exe tag k round
  start_with "$1" "$out/serve-$2.log" serve --backend sim --sim-time-scale 0 --workers "$3" --max-seqs 1024 --max-batched-tokens 4096 --port 0 --json
  "$1" bench --port "$PORT" --connections "$CONNS" --concurrency "$CONNS" --max-tokens 1 --prompt "Hi" --no-text \
    --duration "$DUR" --warmup 2 --json --out-json "$out/cap-$2-k$3-$4.json" >/dev/null
  stop "$LAST"
  json "$out/cap-$2-k$3-$4.json" "d['points'][0]['achieved_rps']"
}

overhead() { # exe tag round -> "p50_added p99_added"
  start_with "$1" "$out/replica-$2.log" serve --backend sim --sim-time-scale 0 --workers 1 --port 0 --json
  local rpid=$LAST replica=$PORT
  start_with "$1" "$out/router-$2.log" route --listen 0 --endpoints "127.0.0.1:$replica" --json
  local tpid=$LAST router=$PORT
  for target in direct router; do
    local port=$replica; [ "$target" = router ] && port=$router
    "$1" bench --port "$port" --rate "$RATE" --connections 16 --max-tokens 1 --prompt "Hi" --no-text \
      --duration "$RDUR" --warmup 2 --json --out-json "$out/ovh-$2-$target-$3.json" >/dev/null
  done
  stop "$tpid"; stop "$rpid"
  python3 -c "
import json
d = json.load(open('$out/ovh-$2-direct-$3.json'))['points'][0]['e2e_ms']
r = json.load(open('$out/ovh-$2-router-$3.json'))['points'][0]['e2e_ms']
print(f\"{r['p50'] - d['p50']:.4f} {r['p99'] - d['p99']:.4f}\")"
}

: >"$out/rounds.csv"
for round in $(seq "$ROUNDS"); do
  for order in A B B A; do
    exe=$A; [ "$order" = B ] && exe=$B
    k1=$(capacity "$exe" "$order" 1 "$round")
    k2=$(capacity "$exe" "$order" 2 "$round")
    read -r o50 o99 < <(overhead "$exe" "$order" "$round")
    echo "$round,$order,$k1,$k2,$o50,$o99" >>"$out/rounds.csv"
    echo "round $round $order: capacity K=1 $k1 req/s, K=2 $k2 req/s; router adds P50 $o50 ms, P99 $o99 ms"
  done
done
python3 - "$out/rounds.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
by = {}
for r in rows:
    by.setdefault((int(r[0]), r[1]), []).append([float(x) for x in r[2:]])
rounds = sorted({k[0] for k in by})
names = ["capacity K=1 (req/s)", "capacity K=2 (req/s)", "router added P50 (ms)", "router added P99 (ms)"]
for i, name in enumerate(names):
    a = [statistics.mean(v[i] for v in by[(r, "A")]) for r in rounds]
    b = [statistics.mean(v[i] for v in by[(r, "B")]) for r in rounds]
    # Noise: how far the two A runs of one round differ, relative to their mean (same binary, same round).
    noise = [abs(by[(r, "A")][0][i] - by[(r, "A")][1][i]) / max(abs(statistics.mean(v[i] for v in by[(r, "A")])), 1e-9) for r in rounds]
    if i < 2:
        ratios = [y / x for x, y in zip(a, b)]
        print(f"{name}: A {', '.join(f'{x:.0f}' for x in a)}; B {', '.join(f'{x:.0f}' for x in b)}; "
              f"B/A per round {', '.join(f'{x:.3f}' for x in ratios)} (median {statistics.median(ratios):.3f}); "
              f"A-vs-A noise {statistics.median(noise) * 100:.1f}%")
    else:
        diffs = [y - x for x, y in zip(a, b)]
        print(f"{name}: A {', '.join(f'{x:.3f}' for x in a)}; B {', '.join(f'{x:.3f}' for x in b)}; "
              f"B-A per round {', '.join(f'{x:+.3f}' for x in diffs)} (median {statistics.median(diffs):+.3f}); "
              f"A-vs-A noise {statistics.median(noise) * 100:.1f}%")
PY
