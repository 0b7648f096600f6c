#!/usr/bin/env bash
# Availability soak (docs/router.md): N simulated replicas behind a router under steady open-loop load for a long
# run, one replica killed with SIGKILL (supervisor, engine and workers at once) every KILL_EVERY seconds and
# restarted on its port. Reports the share of requests that succeeded (target 99.99 %), errors by code, and the
# router's retries, replays, resumes and losses. By default the requests stream (each DELTA passed on as it comes),
# so a replica's death mid-stream is survived only by the router resuming the stream on another replica
# (docs/router.md, "Failover"). The bounded versions are the tests RouterChaosTests and RouterFailoverTests.
# Usage: bench/router/soak.sh [RESULTS_DIR]   (needs dist/fastserve and python3)
# Knobs: N (replicas, 4), RATE (req/s, 300), DUR (seconds, 600), KILL_EVERY (seconds, 5), TOKENS (out per request, 50),
#        WHOLE (0, the default: streamed requests, resumed on another replica when theirs dies mid-stream; 1: requests
#        marked whole, which the router holds back and replays from the start instead).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/soak}
mkdir -p "$out"
N=${N:-4}; RATE=${RATE:-300}; DUR=${DUR:-600}; KILL_EVERY=${KILL_EVERY:-5}; TOKENS=${TOKENS:-50}; WHOLE=${WHOLE:-0}
source bench/lib.sh

wait_ready() { # log -> 0 once the ready line is there
  for _ in $(seq 600); do grep -q '"event":"ready"' "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "did not start: $1 ($(cat "$1.err" 2>/dev/null))" >&2; return 1
}
declare -a rpid rport
start_replica() { # index
  local i=$1
  "$fs" serve --backend sim --workers 1 --port "${rport[$i]}" --json >"$out/r$i.log" 2>>"$out/r$i.log.err" &
  rpid[$i]=$!
  wait_ready "$out/r$i.log"
}
kill_replica() { # index: the supervisor and its children at once, no drain
  local i=$1 kids
  kids=$(pgrep -P "${rpid[$i]}" || true)
  kill -9 "${rpid[$i]}" $kids 2>/dev/null || true
  wait "${rpid[$i]}" 2>/dev/null || true
  for k in $kids; do while kill -0 "$k" 2>/dev/null; do sleep 0.05; done; done
}

for i in $(seq 0 $((N - 1))); do rport[$i]=$(free_port); start_replica "$i"; done
eps=$(for i in $(seq 0 $((N - 1))); do printf '127.0.0.1:%s,' "${rport[$i]}"; done); eps=${eps%,}
"$fs" route --listen 0 --endpoints "$eps" --slow-start-ms 2000 --json >"$out/router.log" 2>"$out/router.log.err" &
router=$!; pids+=("$router")
wait_ready "$out/router.log"
rp=$(python3 -c "import json; print(json.loads([l for l in open('$out/router.log') if '\"ready\"' in l][0])['port'])")
whole=(); [ "$WHOLE" = 1 ] && whole=(--whole)
echo "soak: $N replicas, $RATE req/s for $DUR s, $TOKENS tokens out, a replica killed every $KILL_EVERY s, whole=$WHOLE"

"$fs" bench --port "$rp" --rate "$RATE" --duration "$DUR" --warmup 0 --max-tokens "$TOKENS" --connections 8 "${whole[@]}" \
  --slo-ms 5000 --max-error-rate 1 --json --out-json "$out/soak.json" >/dev/null 2>"$out/bench.err" &
bench=$!
kills=0; i=0; t0=$(date +%s)
while kill -0 "$bench" 2>/dev/null && [ $(( $(date +%s) - t0 )) -lt $((DUR - KILL_EVERY)) ]; do
  sleep "$KILL_EVERY"
  kill -0 "$bench" 2>/dev/null || break
  kill_replica "$i"; kills=$((kills + 1))
  sleep 0.5
  start_replica "$i"
  printf '\r%d s: %d kills' $(( $(date +%s) - t0 )) "$kills" >&2
  i=$(( (i + 1) % N ))
done
wait "$bench" || true
echo >&2
kill -TERM "$router"; wait "$router" 2>/dev/null || true
for i in $(seq 0 $((N - 1))); do kill -TERM "${rpid[$i]}" 2>/dev/null || true; done

python3 - "$out" "$kills" <<'PY'
import json, sys
out, kills = sys.argv[1], int(sys.argv[2])
d = json.load(open(f"{out}/soak.json"))["points"][0]
stopped = [json.loads(l) for l in open(f"{out}/router.log") if '"stopped"' in l]
st = stopped[-1] if stopped else {}
sent, ok = d["sent"], d["ok"]
print(f"sent {sent}, ok {ok}, unfinished {d['unfinished']}, errors {d.get('errors', {})}")
print(f"success {100 * ok / max(sent, 1):.4f} % over {kills} kills (target 99.99 %); "
      f"P50 {d['e2e_ms']['p50']} ms, P99 {d['e2e_ms']['p99']} ms; "
      f"router: retries {st.get('retries')}, replays {st.get('replays')}, resumes {st.get('resumes')}, "
      f"resume_failures {st.get('resume_failures')}, upstream_lost {st.get('upstream_lost')}, no_endpoint {st.get('no_endpoint')}")
PY
