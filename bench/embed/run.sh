#!/usr/bin/env bash
# libfastserve from C against `fastserve batch`, same workload, same machine, interleaved (docs/embed.md):
# gec-tiny over the 1,200 held-out test sentences (tools/gec/data/test.jsonl) in its prompt format, greedy, 64 tokens
# at most, the list repeated PASSES times (default 3) so that each run lasts seconds. Each of ROUNDS rounds (default 3)
# runs batch, then embed_bench with 1, 2, 4 and 8 submitting threads (pull) and 8 threads with callback delivery.
# Then the ABI's added latency per token (first and later tokens; pull and callback; the engine on every core, then on
# all but one), and a summary: each
# configuration's median requests/s over the rounds and its ratio to batch's median, and per round the 8-thread pull
# run over that round's batch run (the side-by-side figure).
# Needs ./build.sh's dist/ (dist/libfastserve.so is built for the lowest level published; compare with the
# dist/fastserve-vN of the same level), python3 and a C compiler.
#   bench/embed/run.sh [MODEL_DIR]     ROUNDS=N PASSES=N; --json prints only the summary as one JSON object
set -euo pipefail
cd "$(dirname "$0")/../.."
json=0
if [ "${1:-}" = --json ]; then json=1; shift; fi
model=${1:-models/gec-tiny}
rounds=${ROUNDS:-3}
passes=${PASSES:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" "$passes" <<'PY'
import json, sys
work, passes = sys.argv[1], int(sys.argv[2])
with open("tools/gec/data/test.jsonl") as f:
    sources = [json.loads(line)["source"] for line in f]
with open(f"{work}/sentences.txt", "w") as s:
    s.writelines(src + "\n" for src in sources)
with open(f"{work}/prompts.jsonl", "w") as p:
    for _ in range(passes):
        p.writelines(json.dumps({"prompt": f"Correct: {src}\nFixed:", "max_tokens": 64}) + "\n" for src in sources)
PY
cc=$(command -v cc || command -v clang || command -v gcc)
"$cc" -O2 -std=c11 -pthread -I native/include bench/embed/embed_bench.c -L dist -lfastserve -Wl,-rpath,"$PWD/dist" -o "$work/embed_bench"
progress() { [ "$json" = 1 ] && printf '%s\n' "$1" >&2 || printf '%s\n' "$1"; }
for r in $(seq "$rounds"); do
  line=$(dist/fastserve batch --model "$model" --input "$work/prompts.jsonl" --output "$work/out.jsonl" --json 2>/dev/null |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(json.dumps({"batch": "in-process", **{k: d[k] for k in ("requests", "finished", "generated_tokens", "seconds", "requests_per_second", "generated_tokens_per_second")}}))')
  progress "$line"; echo "$r $line" >>"$work/results"
  for mode in "1 pull" "2 pull" "4 pull" "8 pull" "8 callback"; do
    set -- $mode
    line=$("$work/embed_bench" "$model" "$work/sentences.txt" "$1" "$2" 64 "$passes")
    progress "$line"; echo "$r $line" >>"$work/results"
  done
done
# Latency twice: the engine's compute threads on every core (the default), then on all cores but one, which leaves a
# core for the consumer thread (a pull consumer woken while the compute threads hold every core waits for one).
"$work/embed_bench" "$model" "$work/sentences.txt" 1 latency | sed 's/^{/{"engine_threads": "all", /' >"$work/latency"
cores=$(nproc)
if [ "$cores" -gt 1 ]; then
  EMBED_BENCH_ENGINE_THREADS=$((cores - 1)) "$work/embed_bench" "$model" "$work/sentences.txt" 1 latency |
    sed "s/^{/{\"engine_threads\": $((cores - 1)), /" >>"$work/latency"
fi
while read -r line; do progress "$line"; done <"$work/latency"
python3 - "$work/results" "$work/latency" "$json" <<'PY'
import json, statistics, sys
rows = [(int(l.split(" ", 1)[0]), json.loads(l.split(" ", 1)[1])) for l in open(sys.argv[1])]
name = lambda d: "batch" if "batch" in d else f"{d['threads']} {d['delivery']}"
by = {}
for r, d in rows:
    by.setdefault(name(d), []).append(d["requests_per_second"])
base = statistics.median(by["batch"])
per_round = {}
for r, d in rows:
    per_round.setdefault(r, {})[name(d)] = d["requests_per_second"]
summary = {
    "rounds": len(per_round),
    "median_requests_per_second": {k: round(statistics.median(v), 1) for k, v in by.items()},
    "ratio_to_batch": {k: round(statistics.median(v) / base, 3) for k, v in by.items() if k != "batch"},
    "round_ratio_8_pull": [round(v["8 pull"] / v["batch"], 3) for _, v in sorted(per_round.items())],
    "round_ratio_8_callback": [round(v["8 callback"] / v["batch"], 3) for _, v in sorted(per_round.items())],
    "latency": [json.loads(l) for l in open(sys.argv[2])],
}
print(json.dumps(summary) if sys.argv[3] == "1" else "summary: " + json.dumps(summary, indent=1))
PY
