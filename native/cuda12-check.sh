#!/usr/bin/env bash
# Compile check of the FP8 fast path with CUDA 12.4 (docs/cuda.md). Debian 12's nvcc 11.8 builds only the portable
# FP8 path; the E4M3 mma needs nvcc >= 12.4, which Debian 13 (trixie) ships in non-free. This fetches that toolkit's
# packages without installing them, builds libfastserve_cuda.so with it for sm_89 and sm_90a into DIR (never dist/),
# and checks the result. Nothing runs on a GPU.
#
#   native/cuda12-check.sh [DIR]     DIR: cache, toolkit, build tree and library (default build/cuda-12.4, or
#                                    $FASTSERVE_CUDA12_DIR); a second run reuses what is there
#   FASTSERVE_DEBIAN_MIRROR, FASTSERVE_DEBIAN_KEYRING, FASTSERVE_DEBIAN_UNSIGNED=1: as in tools/debian-fetch.sh, which
#                                    fetches and verifies the packages (hostile until InRelease's signature, the index's
#                                    and each .deb's SHA256 check out)
#   FASTSERVE_CUDA12_UNSIGNED=1      the older name of FASTSERVE_DEBIAN_UNSIGNED=1
#
# Steps: fetch and verify (network), unpack nvcc, ptxas, headers and the static runtime (about 30 s for the 900 MB
# nvidia-cuda-dev), configure and build the library for 89-real;90a-real, then check
#   (a) FP8: matmul.cu's PTX for compute_89 and compute_90a holds mma.sync ... e4m3, and the library's matmul SASS has
#       QMMA ... E4M3 on sm_89 (native FP8 tensor cores) and on sm_90a the E4M3 unpack + F16 HMMA that ptxas lowers
#       mma.sync e4m3 to on Hopper (Hopper's FP8 tensor-core rate is wgmma's only);
#   (b) nm -D: the same exported symbols as dist/libfastserve_cuda.so (or, without it, the header's FS_API list);
#   (c) the CTests (smoke: the 12.4 library loads, no device; the CPU conversion test) in the 12.4 build tree.
# Output: progress on stderr, one result line on stdout:
#   cuda12-check: PASS ...          exit 0
#   cuda12-check: FAIL (WHAT): ...  WHAT and exit code: setup 1, network 2, download 3, checksum 4, signature 5,
#                                   extract 6, compile 7, fp8 8, exports 9, tests 10
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
deb_name=cuda12-check
# shellcheck source=../tools/debian-fetch.sh
. "$repo/tools/debian-fetch.sh"
deb_codes+=([compile]=7 [fp8]=8 [exports]=9 [tests]=10)
[ "${FASTSERVE_CUDA12_UNSIGNED:-0}" = 1 ] && deb_unsigned=1
archs="89-real;90a-real"
layout=2  # bump when what is unpacked or how changes, so a cached toolkit is unpacked again
start=$SECONDS

deb_require cmake nm
deb_init "${1:-${FASTSERVE_CUDA12_DIR:-$repo/build/cuda-12.4}}" trixie non-free/binary-amd64/Packages.xz
dir=$deb_dir suite=$deb_suite
[ "$dir/dist" != "$repo/dist" ] || fail setup "DIR would put the library in $repo/dist; pick another DIR"
root=$dir/root build=$dir/build out=$dir/dist

# The newest nvidia-cuda-toolkit, and the nvidia-cuda-dev it depends on.
pick_toolkit() {
  local toolkit dev dev_version
  toolkit=$(deb_pick nvidia-cuda-toolkit)
  [ -n "$toolkit" ] || fail download "no nvidia-cuda-toolkit in $suite's $deb_index_path"
  dev_version=$(echo "$toolkit" | awk '{print $6}' | grep -oE '(^|,)nvidia-cuda-dev\(=[^)]+\)' | sed 's/.*(=//; s/)//')
  [ -n "$dev_version" ] || fail download "nvidia-cuda-toolkit does not depend on an exact nvidia-cuda-dev version"
  dev=$(deb_pick nvidia-cuda-dev "$dev_version")
  [ -n "$dev" ] || fail download "nvidia-cuda-dev $dev_version is not in $deb_index_path"
  deb_want "$toolkit"
  deb_want "$dev"
}

# nvcc, ptxas, cuobjdump, the headers and the static runtime. The build tree was configured against the toolkit this
# replaces, so it goes too.
unpack_toolkit() {
  local stage=$1 x=(--exclude='*/nvcc.profile' --exclude=./usr/bin/nvcc --exclude=./usr/bin/compute-sanitizer)
  log "unpacking nvcc, ptxas, cuobjdump, headers and the static runtime (about 30 s: the 900 MB package is decompressed whole)"
  deb_untar "${deb_file[nvidia-cuda-toolkit]}" "$stage" "${x[@]}" './usr/bin/*' './usr/lib/nvidia-cuda-toolkit/bin/*' \
    './usr/lib/nvidia-cuda-toolkit/libdevice/*' || fail extract "$(basename "${deb_file[nvidia-cuda-toolkit]}")"
  deb_untar "${deb_file[nvidia-cuda-dev]}" "$stage" "${x[@]}" './usr/include/*' './usr/lib/x86_64-linux-gnu/libcudart_static.a' \
    './usr/lib/x86_64-linux-gnu/libcudadevrt.a' './usr/lib/x86_64-linux-gnu/libculibos.a' \
    || fail extract "$(basename "${deb_file[nvidia-cuda-dev]}")"
  # The package's nvcc.profile points at /usr and /etc; this one finds everything relative to nvcc itself. libdevice is
  # named through nvvm/libdevice because CMake takes the CUDA library root from a NVVMIR_LIBRARY_DIR ending so; any
  # other name sends it to the host's /usr/lib/cuda (Debian 12's CUDA 11.8 libdevice), and without that to "Couldn't
  # find CUDA library root".
  mkdir -p "$stage/usr/lib/nvidia-cuda-toolkit/nvvm" && ln -s ../libdevice "$stage/usr/lib/nvidia-cuda-toolkit/nvvm/libdevice" \
    || fail extract "cannot link nvvm/libdevice"
  cat >"$stage/usr/lib/nvidia-cuda-toolkit/bin/nvcc.profile" <<'EOF'
TOP = $(_HERE_)/../../..
NVVMIR_LIBRARY_DIR = $(_HERE_)/../nvvm/libdevice
PATH += $(_HERE_):$(TOP)/bin:
INCLUDES += "-I$(TOP)/include" $(_SPACE_)
LIBRARIES =+ $(_SPACE_) "-L$(TOP)/lib/x86_64-linux-gnu"
EOF
  rm -rf "$build"
}

# --- 1-4. Fetch, verify and unpack (tools/debian-fetch.sh) -----------------------------------------------------------
deb_fetch "$root" "$layout" pick_toolkit unpack_toolkit
stamp_file=$deb_stamp offline=$deb_offline

nvcc=$root/usr/lib/nvidia-cuda-toolkit/bin/nvcc
bin=$root/usr/bin
version=$("$nvcc" --version 2>&1 | grep -oE 'release [0-9]+\.[0-9]+, V[0-9.]+' | sed 's/.*, V//')
[ -n "$version" ] || fail extract "$nvcc does not run"
case $version in 12.[4-9]* | 12.[1-9][0-9]* | 1[3-9].*) ;; *) fail setup "$suite ships CUDA $version; the FP8 mma needs 12.4 or newer" ;; esac
# The toolkit's g++ wrapper picks a g++ this nvcc supports (g++-13 down to g++-6).
"$root/usr/lib/nvidia-cuda-toolkit/bin/g++" --version >/dev/null 2>&1 || fail setup "no host compiler CUDA $version accepts (g++ 6 to 13): apt-get install g++"

# --- 5. Build into DIR/build and DIR/dist ---------------------------------------------------------------------------
# A build tree configured against another unpacked toolkit, or from another checkout (DIR shared by clones), starts over.
if [ -f "$build/CMakeCache.txt" ] && { ! cmp -s "$stamp_file" "$build/.fastserve-toolkit" ||
     ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$repo" "$build/CMakeCache.txt"; }; then
  rm -rf "$build"
fi
mkdir -p "$build" && cp "$stamp_file" "$build/.fastserve-toolkit"
log "building libfastserve_cuda.so with CUDA $version for $archs (log: $build/build.log)"
t0=$SECONDS
if ! env -u CUDACXX -u CUDAHOSTCXX cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$archs" -DFASTSERVE_DIST_DIR="$out" \
       >"$build/build.log" 2>&1 ||
   ! cmake --build "$build" -j"$(nproc)" >>"$build/build.log" 2>&1; then
  tail -40 "$build/build.log" >&2
  fail compile "CUDA $version build of libfastserve_cuda.so failed (log: $build/build.log)"
fi
lib=$out/libfastserve_cuda.so
[ -f "$lib" ] || { grep -E '^-- FastServe' "$build/build.log" >&2; fail compile "$lib was not produced (log: $build/build.log)"; }
grep -q 'FP8 GEMM per arch: 89-real: FP8 e4m3 mma, 90a-real: FP8 e4m3 mma' "$build/build.log" \
  || fail fp8 "CMake did not select the FP8 mma for both archs: $(grep -m1 'FP8 GEMM per arch' "$build/build.log")"
log "built in $((SECONDS - t0)) s"

# --- 6a. FP8 instructions: PTX of matmul.cu, SASS of the library ----------------------------------------------------
mma='mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32'
ptx_counts=()
for a in 89 90a; do
  "$nvcc" -ptx -std=c++17 -arch="compute_$a" -I"$repo/native/include" -o "$build/matmul.compute_$a.ptx" \
    "$repo/native/cuda/matmul.cu" >>"$build/build.log" 2>&1 || fail compile "PTX of matmul.cu for compute_$a"
  n=$(grep -c "$mma" "$build/matmul.compute_$a.ptx")
  [ "$n" -gt 0 ] || fail fp8 "no $mma in matmul.cu's PTX for compute_$a"
  ptx_counts+=("sm_$a $n")
done
sass=$build/sass
rm -rf "$sass" && mkdir -p "$sass"
(cd "$sass" && "$bin/cuobjdump" -xelf matmul "$lib" >/dev/null) || fail fp8 "cuobjdump cannot extract matmul's cubins from $lib"
# Only the FP8 kernels (the Fp8Op instances and the wgmma kernel) count: the 16-bit weight kernels in the same file use BF16/F16 mmas.
for a in 89 90a; do
  [ -f "$sass/matmul.sm_$a.cubin" ] || fail fp8 "$lib has no sm_$a code for matmul.cu"
  "$bin/cuobjdump" -sass "$sass/matmul.sm_$a.cubin" >"$sass/matmul.sm_$a.sass" || fail fp8 "cuobjdump -sass of matmul.sm_$a.cubin"
  awk '/Function :/ { keep = index($0, "Fp8Op") > 0 || index($0, "fp8_wgmma") > 0 } keep' "$sass/matmul.sm_$a.sass" >"$sass/matmul-fp8.sm_$a.sass"
  [ -s "$sass/matmul-fp8.sm_$a.sass" ] || fail fp8 "no FP8 (Fp8Op) kernel in the library's sm_$a matmul SASS"
done
qmma89=$(grep -cE 'QMMA\.16832\.F32\.E4M3\.E4M3' "$sass/matmul-fp8.sm_89.sass")
unpack90=$(grep -cE 'F2FP\.F16\.E4M3\.UNPACK_B' "$sass/matmul-fp8.sm_90a.sass")
hmma90=$(grep -E 'HMMA\.16816\.F32' "$sass/matmul-fp8.sm_90a.sass" | grep -vc 'BF16')
bf16_89=$(grep -cE 'HMMA\.[0-9]+\.F32\.BF16' "$sass/matmul-fp8.sm_89.sass")
[ "$qmma89" -gt 0 ] || fail fp8 "no QMMA.16832.F32.E4M3.E4M3 (FP8 tensor-core mma) in the library's sm_89 FP8 kernels"
[ "$bf16_89" -eq 0 ] || fail fp8 "sm_89 FP8 kernels still have $bf16_89 BF16 mmas (the portable path)"
[ "$unpack90" -gt 0 ] && [ "$hmma90" -gt 0 ] || fail fp8 "no E4M3 unpack + F16 HMMA (the FP8 mma.sync as ptxas lowers it for Hopper) in the library's sm_90a FP8 kernels"
# The Hopper prefill kernel: warpgroup MMA on FP8 tensor cores (QGMMA), only in the sm_90a code.
qgmma90=$(grep -cE 'QGMMA\.64x128x32\.F32\.E4M3\.E4M3' "$sass/matmul-fp8.sm_90a.sass")
[ "$qgmma90" -gt 0 ] || fail fp8 "no QGMMA.64x128x32.F32.E4M3.E4M3 (the FP8 wgmma kernel) in the library's sm_90a FP8 kernels"

# --- 6b. Exports ---------------------------------------------------------------------------------------------------
exports() { nm -D --defined-only "$1" | awk '{print $NF}' | sort; }
exports "$lib" >"$build/exports.txt"
ref=$repo/dist/libfastserve_cuda.so
if [ -f "$ref" ]; then
  exports "$ref" >"$build/exports.ref.txt"
  ref_name="dist/libfastserve_cuda.so"
else
  grep -oE '^FS_API [^(]*\bfs_cuda_[a-z0-9_]+\(' "$repo/native/include/fastserve_cuda.h" | grep -oE 'fs_cuda_[a-z0-9_]+' | sort >"$build/exports.ref.txt"
  ref_name="the header's FS_API list (no dist/libfastserve_cuda.so to compare with)"
fi
if ! cmp -s "$build/exports.txt" "$build/exports.ref.txt"; then
  diff "$build/exports.ref.txt" "$build/exports.txt" | grep '^[<>]' | sed 's/^</  missing:/; s/^>/  extra:  /' >&2
  fail exports "exported symbols differ from $ref_name"
fi
n_exports=$(wc -l <"$build/exports.txt")

# --- 6c. CTests in the 12.4 tree (no GPU: the smoke test loads the library and sees no device) -----------------------
ctest --test-dir "$build" --output-on-failure >"$build/ctest.log" 2>&1 || { cat "$build/ctest.log" >&2; fail tests "CTests of the CUDA $version build (log: $build/ctest.log)"; }
n_tests=$(sed -n 's/^100% tests passed, 0 tests failed out of \([0-9]*\)$/\1/p' "$build/ctest.log")
[ "${n_tests:-0}" -gt 0 ] || fail tests "no CTest ran in $build"

echo "cuda12-check: PASS: CUDA $version built $lib for $archs in $((SECONDS - start)) s$([ $offline = 1 ] && echo ' (offline, cached toolkit)');" \
  "FP8 e4m3 mma in PTX (${ptx_counts[0]}, ${ptx_counts[1]}), SASS sm_89 $qmma89 QMMA.E4M3, sm_90a $unpack90 E4M3 unpacks + $hmma90 F16 HMMA + $qgmma90 QGMMA.E4M3 (wgmma);" \
  "$n_exports exports = $ref_name; $n_tests CTests passed"
