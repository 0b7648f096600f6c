#!/usr/bin/env bash
# The vulkan backend beside the cuda backend on one model, on a lent GPU machine with the carried NativeAOT
# dist/fastserve, dist/vulkan/*.spv (./build.sh) and dist/libfastserve_cuda.so (bench/gpu/run.sh). For each backend:
#   1. check-backend (every op against the reference) and its wall time;
#   2. bench-model: prefill tok/s (--prompt-tokens) and batch-1 decode tok/s;
#   3. bench-engine with --max-seqs 32 at an overloading rate: decode at batch 32, as rows per second of the engine's
#      steps (mean sequences per step / forward seconds per step) and finished output tokens per second.
# vulkan runs twice: as it starts (MatMul on the cooperative-matrix shader where the device offers it and
# dist/vulkan/matmul_coopmat.spv exists) and as "vulkan-nocoop" (FASTSERVE_VULKAN_NO_COOPMAT=1: the tiled F32 GEMM);
# check-backend's device line in the log says which MatMul shaders each took.
# Then the vulkan/cuda ratios (the issue's target: decode >= 0.85x cuda). Both backends use a BF16 KV cache. Where a
# backend cannot start (no NVIDIA Vulkan driver on the machine: `vulkaninfo --summary` lists the devices), its line
# says why and the other still runs. On lavapipe (no GPU) only step 1 means anything: pass --check-only.
#   bench/gpu/vulkan.sh RESULTS_DIR [MODEL_DIR] [--check-only]
#   FASTSERVE_VULKAN_DEVICE=N  pick a Vulkan device by index (default: the first discrete GPU)
# GPU machines made for CUDA often lack what Vulkan needs, so first (and logged in vulkan.log, with the NVIDIA
# libraries the machine has in nvidia-libs.txt):
#   - no Vulkan loader (libvulkan.so.1) on the machine: the carried dist/vulkan-loader/libvulkan.so.1 is used
#     (docs/cuda.md: copy this machine's loader there before a lease);
#   - no NVIDIA ICD manifest, but the driver's Vulkan library (libGLX_nvidia.so.0) is there: a manifest naming it is
#     written to RESULTS_DIR and given to the loader (VK_DRIVER_FILES). Where the library is missing too (a container
#     started without the "graphics" driver capability), the log says so and the vulkan runs fail in one line each.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: bench/gpu/vulkan.sh RESULTS_DIR [MODEL_DIR] [--check-only]}"
model="${2:-models/gec-small}"
check_only=0
for a in "$@"; do [ "$a" = --check-only ] && check_only=1; done
[ "$model" = --check-only ] && model=models/gec-small
mkdir -p "$out"
say() { printf '[vulkan] %s\n' "$*" | tee -a "$out/vulkan.log" >&2; }
[ -x dist/fastserve ] || { say "dist/fastserve is missing: run ./build.sh or carry the published executable"; exit 2; }
[ -f "$model/config.json" ] || { say "$model has no config.json"; exit 2; }
command -v vulkaninfo >/dev/null 2>&1 && vulkaninfo --summary >"$out/vulkaninfo.txt" 2>&1
ldconfig -p 2>/dev/null | grep -iE 'nvidia|libcuda|libvulkan' >"$out/nvidia-libs.txt"
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '; then
  if [ -f dist/vulkan-loader/libvulkan.so.1 ]; then
    export LD_LIBRARY_PATH="$PWD/dist/vulkan-loader${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "no Vulkan loader on this machine: using the carried dist/vulkan-loader/libvulkan.so.1"
  else
    say "no Vulkan loader on this machine and none carried (dist/vulkan-loader/libvulkan.so.1, docs/cuda.md)"
  fi
fi
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && ! ls /etc/vulkan/icd.d/nvidia*.json /usr/share/vulkan/icd.d/nvidia*.json \
     /usr/local/share/vulkan/icd.d/nvidia*.json >/dev/null 2>&1; then
  if ldconfig -p 2>/dev/null | grep -q 'libGLX_nvidia\.so\.0 '; then
    printf '{"file_format_version": "1.0.1", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3.0"}}\n' >"$out/nvidia_icd.json"
    export VK_DRIVER_FILES="$PWD/$out/nvidia_icd.json" VK_ICD_FILENAMES="$PWD/$out/nvidia_icd.json"
    [[ "$out" = /* ]] && export VK_DRIVER_FILES="$out/nvidia_icd.json" VK_ICD_FILENAMES="$out/nvidia_icd.json"
    say "no NVIDIA Vulkan ICD manifest: wrote $VK_DRIVER_FILES naming the driver's libGLX_nvidia.so.0"
  else
    say "no NVIDIA Vulkan driver here: neither an ICD manifest nor libGLX_nvidia.so.0 (a container needs the 'graphics' driver capability); see nvidia-libs.txt"
  fi
fi
[ -f dist/libfastserve_cuda.so ] && export FASTSERVE_CUDA_LIB="$PWD/dist/libfastserve_cuda.so"

# label, backend, environment (NAME=VALUE or empty)
runs=("vulkan vulkan" "vulkan-nocoop vulkan FASTSERVE_VULKAN_NO_COOPMAT=1" "cuda cuda")
[ "$check_only" = 1 ] && runs=("vulkan vulkan")
for run in "${runs[@]}"; do
  read -r b backend env_set <<<"$run"
  fs() { env ${env_set:+"$env_set"} dist/fastserve "$@"; }
  start=$(date +%s.%N)
  if fs check-backend --backend "$backend" --json >"$out/check-$b.json" 2>"$out/check-$b.err"; then
    say "$b check-backend: passed in $(echo "$(date +%s.%N) - $start" | bc) s"
  else
    say "$b check-backend: FAILED ($(head -1 "$out/check-$b.err"))"
  fi
  device=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("device", ""))' "$out/check-$b.json" 2>/dev/null)
  [ -n "$device" ] && say "$b device: $device"
  [ "$check_only" = 1 ] && continue
  fs bench-model --backend "$backend" --model "$model" --kv-dtype bf16 --prompt-tokens 128 --decode-tokens 64 --json \
    >"$out/bench-model-$b.json" 2>"$out/bench-model-$b.err" || say "$b bench-model failed: $(head -1 "$out/bench-model-$b.err")"
  fs bench-engine --backend "$backend" --model "$model" --kv-dtype bf16 --max-seqs 32 --rate 1000 --in 64 --out 128 \
    --duration 10 --warmup 3 --json >"$out/bench-engine-$b.json" 2>"$out/bench-engine-$b.err" \
    || say "$b bench-engine failed: $(head -1 "$out/bench-engine-$b.err")"
done
[ "$check_only" = 1 ] && exit 0

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f: return json.load(f)
    except Exception: return None
def find(o, key):
    # first value of `key` anywhere in the JSON (bench-engine nests its per-rate results)
    if isinstance(o, dict):
        if key in o: return o[key]
        o = list(o.values())
    if isinstance(o, list):
        for v in o:
            r = find(v, key)
            if r is not None: return r
    return None
rows = {}
for b in ("vulkan", "vulkan-nocoop", "cuda"):
    bm, be = load(f"bench-model-{b}.json"), load(f"bench-engine-{b}.json")
    r = {}
    if bm:
        r["prefill"] = find(bm, "prefill_tokens_per_second")
        r["decode1"] = find(bm, "decode_tokens_per_second")
    if be:
        seqs, ms = find(be, "mean_sequences_per_step"), find(be, "forward_ms_per_step")
        if seqs and ms: r["decode32"] = seqs / (ms / 1000)
        r["seqs"] = seqs
    rows[b] = r
def f(v): return f"{v:10.1f}" if isinstance(v, (int, float)) else f"{'-':>10}"
print(f"{'':14}{'prefill tok/s':>16}{'decode b1 tok/s':>18}{'decode b32 tok/s':>18}{'seqs/step':>11}")
for b, r in rows.items():
    print(f"{b:14}{f(r.get('prefill')):>16}{f(r.get('decode1')):>18}{f(r.get('decode32')):>18}{f(r.get('seqs')):>11}")
c = rows["cuda"]
for name in ("vulkan", "vulkan-nocoop"):
    v = rows[name]
    for k, label in (("prefill", "prefill"), ("decode1", "decode batch 1"), ("decode32", "decode batch 32")):
        if v.get(k) and c.get(k): print(f"{name}/cuda {label}: {v[k] / c[k]:.2f}x")
PY
