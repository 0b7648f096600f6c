# Shell helpers the benchmark scripts source (bench/*/…-bench.sh): start and stop fastserve processes that print a
# JSON "ready" line, read JSON results. Sourcing sets an EXIT trap that stops every process started with `start`.
# The scripts' `fs` variable names the binary (default dist/fastserve; `start_with` takes another one, for A/B runs).

fs=${fs:-dist/fastserve}
pids=()
_bench_cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap _bench_cleanup EXIT

# start_with EXE LOG ARGS... : runs `EXE ARGS...` in the background (stdout to LOG, stderr to LOG.err), waits for its
# ready line, and sets PORT (the port it listens on) and LAST (its pid). Not in a subshell, so the pid list survives.
start_with() {
  local exe=$1 log=$2; shift 2
  "$exe" "$@" >"$log" 2>"$log.err" &
  LAST=$!
  pids+=("$LAST")
  for _ in $(seq 300); do
    if grep -q '"event":"ready"' "$log" 2>/dev/null; then
      PORT=$(python3 -c "import json; print(json.loads([l for l in open('$log') if '\"ready\"' in l][0])['port'])"); return 0
    fi
    sleep 0.1
  done
  echo "did not start: $exe $* ($(cat "$log.err"))" >&2; exit 1
}
# start LOG ARGS... : start_with "$fs".
start() { start_with "$fs" "$@"; }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# json FILE PYTHON_EXPR : prints the expression over the parsed file `d`.
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
