#!/usr/bin/env bash
# Sets up what a fresh Debian 12 machine lacks, then publishes the NativeAOT executable to dist/fastserve
# and, where a CUDA toolkit exists, the native kernel library. Idempotent: safe to run again.
#   ./build.sh            build everything that can be built here
#   FASTSERVE_SKIP_APT=1  never call apt-get (report what is missing instead)
#   FASTSERVE_CUDA=1      also install Debian's CUDA toolkit (nvcc 11.8, about 2 GB, once) and clang-14 when nvcc is
#                         missing, so the kernel library is always built; CI (CI=true) does this by default.
#                         FASTSERVE_CUDA=0 opts out even under CI.
#   FASTSERVE_LEVELS=v4   publish only the named x86-64 levels (default "v4 v3"); for quick iteration on a machine
#                         that runs that level. A level not published is removed from dist/ (never a stale binary).
#   FASTSERVE_VULKAN_COOPMAT=1  also compile the Vulkan cooperative-matrix shaders (native/vulkan/shaders/coopmat/)
#                         with Debian 13's glslc, fetched, verified and unpacked (never installed) by
#                         native/vulkan/glslc-coopmat.sh into ~/.cache/fastserve/glslc-trixie (about 25 MB, once);
#                         CI (CI=true) does this by default, and fails when that glslc cannot be had.
#                         FASTSERVE_VULKAN_COOPMAT=0 opts out even under CI.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m[build]\033[0m %s\n' "$*" >&2; }

# NativeAOT links with clang and needs zlib's headers; CMake drives the native part. test.sh's CUDA 12.4 check
# (native/cuda12-check.sh, under CI or with FASTSERVE_CUDA12_CHECK=1) fetches with curl, verifies with gpgv and
# Debian's keyring, and its nvcc takes g++ as host compiler. The vulkan backend: the loader, Mesa's drivers (lavapipe,
# the software device its checks run on) and glslc, which compiles its shaders; the cooperative-matrix shaders' glslc
# comes from Debian 13 the same way as CUDA 12.4 (tools/debian-fetch.sh).
pkgs=(clang zlib1g-dev cmake libvulkan1 mesa-vulkan-drivers glslc)
want_coopmat="${FASTSERVE_VULKAN_COOPMAT:-}"
if [ -z "$want_coopmat" ] && [ "${CI:-}" = true ]; then want_coopmat=1; fi
if [ "$want_coopmat" = 1 ]; then
  pkgs+=(curl xz-utils gpgv debian-archive-keyring)
fi
if [ "${FASTSERVE_CUDA12_CHECK:-}" = 1 ] || { [ "${CI:-}" = true ] && [ "${FASTSERVE_CUDA12_CHECK:-}" != 0 ]; }; then
  pkgs+=(curl xz-utils gpgv debian-archive-keyring g++)
fi
need=()
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "${FASTSERVE_SKIP_APT:-0}" = 1 ]; then
    log "missing packages: ${need[*]} (FASTSERVE_SKIP_APT=1, not installing)"
  else
    log "installing: ${need[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
fi

# CUDA toolkit, opt-in: Debian ships nvidia-cuda-toolkit in non-free, which the stock deb822 sources leave out. A
# separate sources file adds contrib/non-free for the same mirrors, suites and keyring, so debian.sources is untouched
# and running this again changes nothing.
want_cuda="${FASTSERVE_CUDA:-}"
if [ -z "$want_cuda" ] && [ "${CI:-}" = true ]; then want_cuda=1; fi
if [ "$want_cuda" = 1 ] && ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  if [ "${FASTSERVE_SKIP_APT:-0}" = 1 ]; then
    log "FASTSERVE_CUDA=1 but nvcc is missing (FASTSERVE_SKIP_APT=1, not installing nvidia-cuda-toolkit)"
  else
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    src=/etc/apt/sources.list.d/debian.sources
    extra=/etc/apt/sources.list.d/fastserve-nonfree.sources
    if [ -f "$src" ]; then
      mkdir -p build
      awk '/^Components:/ { print "Components: contrib non-free"; next } { print }' "$src" >build/nonfree.sources.tmp
      if ! cmp -s build/nonfree.sources.tmp "$extra"; then
        log "adding contrib non-free components: $extra"
        $SUDO cp build/nonfree.sources.tmp "$extra"
      fi
      rm -f build/nonfree.sources.tmp
    elif ! grep -Eqs '^deb .* non-free' /etc/apt/sources.list; then
      log "no $src and no non-free line in /etc/apt/sources.list; add non-free to install nvidia-cuda-toolkit"
    fi
    log "installing the CUDA toolkit (nvidia-cuda-toolkit, clang-14; a large download, once per machine)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit clang-14
  fi
fi

if ! command -v dotnet >/dev/null 2>&1; then
  log "the .NET 10 SDK is required (dotnet not found on PATH); install it, then run ./build.sh again"
  exit 1
fi

# NativeAOT fixes the instruction set at compile time, so there are two builds of the same sources: fastserve-v4
# (x86-64-v4, AVX-512 kernels) and fastserve-v3 (x86-64-v3, AVX2 + FMA kernels). dist/fastserve is a small C launcher
# that checks CPUID as the .NET runtime does and execs the best one this processor runs (same pid, arguments, exit
# status), or says in one line which features a pre-AVX2 processor lacks (docs/portability.md). Each level has its own
# object and link directories (FastServeX86Level in the csproj), so a build with no source change redoes neither.
log "publishing NativeAOT executables -> dist/fastserve-v4, dist/fastserve-v3 (launcher: dist/fastserve)"
mkdir -p build dist
# The fingerprint of the sources as they are now, stamped next to the binary only once it is published (a failed
# publish leaves no stamp): the end-to-end tests refuse a dist/fastserve whose stamp differs from the checkout's
# (tests/sources-fingerprint.sh, tests/FastServe.Tests/DistBinary.cs). It covers the launcher (under runtime/).
fingerprint=$(tests/sources-fingerprint.sh)
rm -f dist/fastserve.sources-sha256
levels="${FASTSERVE_LEVELS:-v4 v3}"
for level in $levels; do
  case "$level" in v3|v4) ;; *) log "FASTSERVE_LEVELS: unknown level '$level' (v3, v4)"; exit 1 ;; esac
  if ! dotnet publish runtime/FastServe.Cli/FastServe.Cli.csproj -c Release -r linux-x64 -o "build/publish/x86-64-$level" \
       -nologo -v q -p:DebugType=none -p:FastServeX86Level="$level" >"build/publish-$level.log" 2>&1; then
    cat "build/publish-$level.log" >&2
    log "publish failed (x86-64-$level)"
    exit 1
  fi
  test -x "build/publish/x86-64-$level/fastserve" || { log "the x86-64-$level build was not produced"; exit 1; }
done
# The embeddable library (docs/embed.md): one more NativeAOT publish, of the engine alone, as dist/libfastserve.so. A
# shared library cannot pick its instruction set at load time as the launcher does, so it is built for the lowest
# level published (v3 by default: it loads on every AVX2 host).
case " $levels " in *" v3 "*) lib_level=v3 ;; *) lib_level=${levels%% *} ;; esac
log "publishing NativeAOT shared library -> dist/libfastserve.so (x86-64-$lib_level)"
if ! dotnet publish interop/FastServe.Embed/FastServe.Embed.csproj -c Release -r linux-x64 -o "build/publish/lib-$lib_level" \
     -nologo -v q -p:DebugType=none -p:FastServeX86Level="$lib_level" >"build/publish-lib.log" 2>&1; then
  cat build/publish-lib.log >&2
  log "publish failed (libfastserve.so)"
  exit 1
fi
mkdir -p build/launcher
clang -O2 -std=c11 -Wall -Wextra -Werror -march=x86-64 -mtune=generic -o build/launcher/fastserve \
  runtime/FastServe.Launcher/launcher.c || { log "launcher compile failed"; exit 1; }
# Into dist/ by rename, so a dist/fastserve* that is running (a replica) is replaced, not written over. The rest of
# the publish output (the chart libraries) is the same for both levels.
install_file() { cp -p "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"; }
first=${levels%% *}
for f in "build/publish/x86-64-$first"/*; do
  [ "$(basename "$f")" = fastserve ] || install_file "$f" "dist/$(basename "$f")"
done
for level in v4 v3; do
  case " $levels " in *" $level "*) install_file "build/publish/x86-64-$level/fastserve" "dist/fastserve-$level" ;; *) rm -f "dist/fastserve-$level" ;; esac
done
install_file build/launcher/fastserve dist/fastserve
install_file "build/publish/lib-$lib_level/libfastserve.so" dist/libfastserve.so
echo "$fingerprint" >dist/fastserve.sources-sha256
log "dist/fastserve $(stat -c %s dist/fastserve) B$(for l in v4 v3; do [ -f "dist/fastserve-$l" ] && printf ', dist/fastserve-%s %s B' "$l" "$(stat -c %s "dist/fastserve-$l")"; done)"

# Native kernels (CUDA) and the Vulkan shaders (dist/vulkan/*.spv): CMake reports and skips each cleanly when its
# compiler (nvcc, glslc) is absent. Any compile error fails the build. With FASTSERVE_CUDA=1 (or under CI) a missing
# library after the build is an error too, and under CI so are missing shaders (the vulkan tests run on lavapipe).
if command -v cmake >/dev/null 2>&1; then
  # The cooperative-matrix shaders' compiler, or none: always passed, so a build without FASTSERVE_VULKAN_COOPMAT=1 does
  # not use the GLSLC_COOPMAT an earlier configure cached (CMake then removes their stale .spv from dist/vulkan).
  glslc_coopmat="" coopmat_skipped="skipped (FASTSERVE_VULKAN_COOPMAT=1 builds them)"
  if [ "$want_coopmat" = 1 ]; then
    if ! glslc_coopmat=$(native/vulkan/glslc-coopmat.sh 2>build/glslc-coopmat.log); then
      coopmat_skipped="skipped: $glslc_coopmat (log: build/glslc-coopmat.log)"
      glslc_coopmat=""
      if [ "${CI:-}" = true ]; then
        cat build/glslc-coopmat.log >&2
        log "vulkan cooperative-matrix shaders: $coopmat_skipped"
        log "CI needs the vulkan cooperative-matrix shaders: their glslc could not be had"
        exit 1
      fi
    fi
  fi
  cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release -DGLSLC_COOPMAT="$glslc_coopmat" >build/native.log 2>&1 || { cat build/native.log >&2; log "native configure failed"; exit 1; }
  cmake --build build/native -j"$(nproc)" >>build/native.log 2>&1 || { cat build/native.log >&2; log "native build failed"; exit 1; }
  grep -E '^-- FastServe' build/native.log >&2 || true
  spv=$(find dist/vulkan -name '*.spv' 2>/dev/null | wc -l)
  if [ "$spv" -gt 0 ]; then log "vulkan shaders: $spv in dist/vulkan"; else log "vulkan shaders: none built (no glslc; --backend vulkan will report vulkan.no_shaders)"; fi
  if [ "$spv" -eq 0 ] && [ "${CI:-}" = true ]; then log "CI needs the vulkan shaders: install glslc"; exit 1; fi
  if [ -n "$glslc_coopmat" ]; then
    coopmat_spv=0
    for f in native/vulkan/shaders/coopmat/*.comp; do
      [ -e "$f" ] && [ -f "dist/vulkan/$(basename "$f" .comp).spv" ] && coopmat_spv=$((coopmat_spv + 1))
    done
    log "vulkan cooperative-matrix shaders: $coopmat_spv built with $("$glslc_coopmat" --version 2>&1 | head -1)"
  else
    log "vulkan cooperative-matrix shaders: $coopmat_skipped"
  fi
  if [ -f dist/libfastserve_cuda.so ] && [ -x build/native/native/fastserve_cuda_smoke ]; then
    build/native/native/fastserve_cuda_smoke dist/libfastserve_cuda.so >build/native-smoke.log 2>&1 \
      || { cat build/native-smoke.log >&2; log "native smoke test failed"; exit 1; }
  fi
  if [ "$want_cuda" = 1 ] && [ ! -f dist/libfastserve_cuda.so ]; then
    cat build/native.log >&2
    log "FASTSERVE_CUDA=1 but dist/libfastserve_cuda.so was not built"
    exit 1
  fi
elif [ "$want_cuda" = 1 ]; then
  log "FASTSERVE_CUDA=1 needs cmake"; exit 1
fi
log "done: $(dist/fastserve --version 2>/dev/null || echo dist/fastserve)"
