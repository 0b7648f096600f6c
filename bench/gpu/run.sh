#!/usr/bin/env bash
# The one script to run on a GPU machine (CUDA toolkit, PyTorch, python3; no .NET SDK needed): builds
# libfastserve_cuda.so with the machine's nvcc into dist/, runs the native smoke test, every op against PyTorch
# (ops_check.py), `dist/fastserve check-backend --backend cuda --json` when dist/fastserve was carried over, and the
# FP8 GEMM comparison (gemm_compare.py); on Hopper both again with the opt-in wgmma kernel (FASTSERVE_CUDA_WGMMA=1).
# Everything lands in RESULTS_DIR; the exit status is non-zero if a step failed. bench/gpu/e2e.sh comes after it.
#   bench/gpu/run.sh RESULTS_DIR [--quick]
#   CUDA_ARCHS="90a-real"  build only these archs (default: CMake's, 80-real;89-real;90a-real;90-virtual with CUDA 12+)
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: bench/gpu/run.sh RESULTS_DIR [--quick]}"
quick="${2:-}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
failed=()
say() { printf '[gpu] %s\n' "$*" | tee -a "$out/run.log" >&2; }

nvcc="$(command -v nvcc || true)"
[ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; }
if [ -z "$nvcc" ]; then
  say "no nvcc on PATH or in /usr/local/cuda/bin: install the CUDA toolkit, or set PATH"
  exit 2
fi
say "nvcc: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*'))"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >"$out/nvidia-smi.txt" 2>&1

# Build. CMake when present (the project's way), else the same flags by hand.
mkdir -p dist build
if command -v cmake >/dev/null 2>&1; then
  archs=()
  [ -n "${CUDA_ARCHS:-}" ] && archs=(-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS")
  if cmake -S . -B build/native-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc" "${archs[@]}" \
       >"$out/build.log" 2>&1 && cmake --build build/native-gpu -j"$(nproc)" >>"$out/build.log" 2>&1; then
    grep -E '^-- FastServe' "$out/build.log" >&2
  else
    tail -50 "$out/build.log" >&2
    say "build failed (full log: $out/build.log)"
    exit 1
  fi
  smoke=build/native-gpu/native/fastserve_cuda_smoke
else
  say "cmake not found: building with nvcc directly"
  gencode="-gencode arch=compute_80,code=sm_80 -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90 -DFS_BUILD_WGMMA=1"
  # shellcheck disable=SC2086
  if ! "$nvcc" -O3 -std=c++17 -shared -Xcompiler -fPIC,-fvisibility=hidden -cudart static $gencode -lineinfo \
       -Inative/include native/cuda/*.cu -o dist/libfastserve_cuda.so \
       -Xlinker --exclude-libs,ALL -Xlinker --version-script=native/cuda/exports.map >"$out/build.log" 2>&1; then
    tail -50 "$out/build.log" >&2
    say "build failed (full log: $out/build.log)"
    exit 1
  fi
  smoke=build/fastserve_cuda_smoke
  cc -O1 -Inative/include native/tests/smoke.c -o "$smoke" -ldl >>"$out/build.log" 2>&1 || smoke=""
fi
say "built dist/libfastserve_cuda.so"
nm -D --defined-only dist/libfastserve_cuda.so >"$out/exports.txt" 2>&1 || true

if [ -n "$smoke" ] && [ -x "$smoke" ]; then
  if "$smoke" dist/libfastserve_cuda.so >"$out/smoke.txt" 2>&1; then say "smoke: ok ($(grep '^device 0' "$out/smoke.txt" || true))"
  else cat "$out/smoke.txt" >&2; failed+=(smoke); fi
fi

if [ -x dist/fastserve ]; then
  if dist/fastserve check-backend --backend cuda --json >"$out/check-backend.json" 2>"$out/check-backend.err"; then
    say "check-backend: ok ($out/check-backend.json)"
  else
    say "check-backend failed (exit $?): $(tail -3 "$out/check-backend.err")"
    failed+=(check-backend)
  fi
else
  say "dist/fastserve not present: skipping check-backend (carry the published executable to run it)"
fi

# Hopper: the FP8 wgmma prefill kernel is opt-in until checked here (FASTSERVE_CUDA_WGMMA=1); check and time it too.
hopper=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | grep -q '^9\.0'; then
  hopper=1
fi
if [ "$hopper" = 1 ] && [ -x dist/fastserve ]; then
  if FASTSERVE_CUDA_WGMMA=1 dist/fastserve check-backend --backend cuda --op MatMul --json >"$out/check-backend-wgmma.json" 2>"$out/check-backend-wgmma.err"; then
    say "check-backend MatMul with FASTSERVE_CUDA_WGMMA=1: ok"
  else
    say "check-backend MatMul with FASTSERVE_CUDA_WGMMA=1 failed: $(tail -3 "$out/check-backend-wgmma.err")"
    failed+=(check-backend-wgmma)
  fi
fi

if ! command -v python3 >/dev/null 2>&1; then
  say "python3 not found: skipping ops_check.py and gemm_compare.py"
  failed+=(python3)
elif ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  say "PyTorch with CUDA is not importable: skipping ops_check.py and gemm_compare.py (pip install torch)"
  failed+=(torch)
else
  if python3 bench/gpu/ops_check.py --lib dist/libfastserve_cuda.so --out "$out/ops.json" 2>&1 | tee "$out/ops.txt"; then
    say "ops_check: ok"
  else
    failed+=(ops_check)
  fi
  if python3 bench/gpu/gemm_compare.py --lib dist/libfastserve_cuda.so --out "$out/gemm.json" $quick 2>&1 | tee "$out/gemm.txt"; then
    say "gemm_compare: ok"
  else
    failed+=(gemm_compare)
  fi
  if [ "$hopper" = 1 ]; then
    if FASTSERVE_CUDA_WGMMA=1 python3 bench/gpu/gemm_compare.py --lib dist/libfastserve_cuda.so --out "$out/gemm-wgmma.json" $quick 2>&1 | tee "$out/gemm-wgmma.txt"; then
      say "gemm_compare with FASTSERVE_CUDA_WGMMA=1: ok"
    else
      failed+=(gemm_compare-wgmma)
    fi
  fi
fi

if [ ${#failed[@]} -gt 0 ]; then
  say "failed: ${failed[*]} (results in $out)"
  exit 1
fi
say "all steps passed (results in $out)"
