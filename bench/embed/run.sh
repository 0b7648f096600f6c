#!/usr/bin/env bash
# libfastserve from C against `fastserve batch`, same workload, same machine, one after the other (docs/embed.md):
# gec-tiny over the 1,200 held-out test sentences (tools/gec/data/test.jsonl) in its prompt format, greedy, 64 tokens
# at most. Prints batch's JSON summary, then embed_bench's line for 1, 2, 4 and 8 submitting threads (pull), and 8
# threads with callback delivery, then the ABI's added first-token latency (pull and callback). Needs ./build.sh's dist/ (dist/libfastserve.so is built for the lowest level
# published; compare with the dist/fastserve-vN of the same level), python3 and a C compiler.
#   bench/embed/run.sh [MODEL_DIR]     REPEAT=N runs each line N times (default 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-models/gec-tiny}
repeat=${REPEAT:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
with open("tools/gec/data/test.jsonl") as f, open(f"{work}/sentences.txt", "w") as s, open(f"{work}/prompts.jsonl", "w") as p:
    for line in f:
        src = json.loads(line)["source"]
        s.write(src + "\n")
        p.write(json.dumps({"prompt": f"Correct: {src}\nFixed:", "max_tokens": 64}) + "\n")
PY
cc=$(command -v cc || command -v clang || command -v gcc)
"$cc" -O2 -std=c11 -pthread -I native/include bench/embed/embed_bench.c -L dist -lfastserve -Wl,-rpath,"$PWD/dist" -o "$work/embed_bench"
for _ in $(seq "$repeat"); do
  dist/fastserve batch --model "$model" --input "$work/prompts.jsonl" --output "$work/out.jsonl" --json 2>/dev/null |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(json.dumps({"batch": "in-process", **{k: d[k] for k in ("requests", "finished", "generated_tokens", "seconds", "requests_per_second", "generated_tokens_per_second")}}))'
  for t in 1 2 4 8; do "$work/embed_bench" "$model" "$work/sentences.txt" "$t" pull; done
  "$work/embed_bench" "$model" "$work/sentences.txt" 8 callback
done
"$work/embed_bench" "$model" "$work/sentences.txt" 1 latency
