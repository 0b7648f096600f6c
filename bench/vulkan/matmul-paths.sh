#!/usr/bin/env bash
# The vulkan backend's MatMul shaders side by side on one model: bench-model's prefill tok/s (--prompt-tokens rows per
# MatMul) and batch-1 decode tok/s, once per path and round, the paths interleaved so that drift on a shared machine
# falls on all of them alike. Paths:
#   gemv     FASTSERVE_VULKAN_TILED=0        the GEMV shaders for every row count (the state before the tiled GEMM)
#   tiled    FASTSERVE_VULKAN_NO_COOPMAT=1   the tiled F32 GEMM from 16 rows (the default where no cooperative matrix runs)
#   default  nothing set                     as the backend starts: the cooperative-matrix shader for F16 and FP8
#                                            weights where the device offers it, else the same as tiled
# Prints per round and a median summary with each path's ratio to gemv; --json prints the same as one JSON object.
#   bench/vulkan/matmul-paths.sh [--json] [MODEL_DIR]
#   ROUNDS=3 PROMPT=128 DECODE=8 QUANTIZE=fp8 (empty: weights as stored)  FASTSERVE_VULKAN_DEVICE=N
#   FASTSERVE_LAVAPIPE_COOPMAT=WRAPPER   run on the lavapipe that offers VK_KHR_cooperative_matrix
#                                        (WRAPPER: what native/vulkan/lavapipe-coopmat.sh prints), so "default" is the
#                                        cooperative-matrix shader; the wrapper runs the build dist/fastserve would pick
set -uo pipefail
cd "$(dirname "$0")/../.."
json=0
model=""
for a in "$@"; do
  case $a in
    --json) json=1 ;;
    *) model=$a ;;
  esac
done
rounds=${ROUNDS:-3} prompt=${PROMPT:-128} decode=${DECODE:-8} quantize=${QUANTIZE-fp8}
[ -x dist/fastserve ] || { echo "dist/fastserve is missing: run ./build.sh" >&2; exit 2; }
run=(dist/fastserve)
if [ -n "${FASTSERVE_LAVAPIPE_COOPMAT:-}" ]; then
  # The wrapper runs an ELF file on another loader: the launcher's choice by hand, and the shaders named (the
  # executable looks for them, and the built-in default model, beside itself, which is then that loader).
  exe=dist/fastserve-v3
  [ -x dist/fastserve-v4 ] && [ "$(grep -m1 '^flags' /proc/cpuinfo | grep -owE 'avx512(f|bw|cd|dq|vl)' | sort -u | wc -l)" = 5 ] && exe=dist/fastserve-v4
  run=("$FASTSERVE_LAVAPIPE_COOPMAT" "$exe")
  export FASTSERVE_VULKAN_SHADERS=$PWD/dist/vulkan FASTSERVE_DEFAULT_MODEL=${FASTSERVE_DEFAULT_MODEL:-$PWD/models/gec-small}
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
paths=("gemv FASTSERVE_VULKAN_TILED=0" "tiled FASTSERVE_VULKAN_NO_COOPMAT=1" "default")
for ((r = 1; r <= rounds; r++)); do
  for p in "${paths[@]}"; do
    read -r name env_set <<<"$p"
    [ "$json" = 1 ] || printf '[matmul-paths] round %d/%d: %s\n' "$r" "$rounds" "$name" >&2
    env ${env_set:+"$env_set"} "${run[@]}" bench-model --backend vulkan ${model:+--model "$model"} ${quantize:+--quantize "$quantize"} \
      --prompt-tokens "$prompt" --decode-tokens "$decode" --json >"$tmp/$name.$r.json" 2>"$tmp/$name.$r.err" \
      || { echo "bench-model ($name) failed: $(head -1 "$tmp/$name.$r.err")" >&2; exit 1; }
  done
done
/usr/bin/env python3 - "$tmp" "$rounds" "$json" "${model:-default model}" "$prompt" "${quantize:-as stored}" <<'PY'
import json, statistics, sys
tmp, rounds, as_json, model, prompt, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5], sys.argv[6]
names = ["gemv", "tiled", "default"]
runs = {n: [json.load(open(f"{tmp}/{n}.{r}.json"))["runs"][0] for r in range(1, rounds + 1)] for n in names}
out = {"model": model, "prompt_tokens": int(prompt), "weights": weights, "rounds": rounds, "paths": {}}
for n in names:
    pre = [x["prefill_tokens_per_second"] for x in runs[n]]
    dec = [x["decode_tokens_per_second"] for x in runs[n]]
    out["paths"][n] = {"prefill_tok_s": pre, "decode_tok_s": dec,
                       "prefill_median": statistics.median(pre), "decode_median": statistics.median(dec)}
base = out["paths"]["gemv"]
for n in names:
    p = out["paths"][n]
    p["prefill_vs_gemv"] = p["prefill_median"] / base["prefill_median"]
    p["decode_vs_gemv"] = p["decode_median"] / base["decode_median"]
if as_json:
    print(json.dumps(out, indent=2))
else:
    print(f"{model}, {weights} weights, prompt {prompt}, {rounds} rounds (tok/s per round; median; ratio to gemv)")
    for n in names:
        p = out["paths"][n]
        print(f"  {n:8} prefill {' '.join(f'{v:8.1f}' for v in p['prefill_tok_s'])}  median {p['prefill_median']:8.1f}  {p['prefill_vs_gemv']:.2f}x"
              f" | decode b1 median {p['decode_median']:7.1f}  {p['decode_vs_gemv']:.2f}x")
PY
