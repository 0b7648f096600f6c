#!/usr/bin/env bash
# The main job in one command: a replica (`fastserve serve`) on the built-in default model, the trained
# grammar-correction model models/gec-small (FP8 weights, CPU backend); one request in its prompt format, whose
# correction is printed, then a short drive by `fastserve bench` with the held-out grammar-correction sentences;
# prints the results and stops the replica. Usage: bench/server/quick.sh [extra bench flags]   (after ./build.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
log=$(mktemp)
dist/fastserve serve --port 0 --json --quantize fp8 --overlap off --workers 1 >"$log.out" 2>"$log.err" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log" "$log.out" "$log.err"' EXIT
for _ in $(seq 600); do grep -q '"ready"' "$log.out" 2>/dev/null && break; kill -0 $pid 2>/dev/null || { cat "$log.err" >&2; exit 1; }; sleep 0.2; done
port=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$log.out" | head -1)
[ -n "$port" ] || { echo "the replica did not become ready" >&2; cat "$log.err" >&2; exit 1; }
echo "replica ready on 127.0.0.1:$port; one request first:" >&2
# The model's prompt format (tools/gec/format.py): it answers " <corrected sentence>\n", then EOS.
dist/fastserve client --port "$port" --max-tokens 32 $'Correct: She don\'t like apples.\nFixed:'
echo >&2
dist/fastserve bench --port "$port" --connections 4 --rate 4 --duration 15 --warmup 3 "$@"
