#!/usr/bin/env bash
# Sets up what a fresh Debian 12 machine lacks, then publishes the NativeAOT executable to dist/fastserve
# and, where a CUDA toolkit exists, the native kernel library. Idempotent: safe to run again.
#   ./build.sh            build everything that can be built here
#   FASTSERVE_SKIP_APT=1  never call apt-get (report what is missing instead)
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m[build]\033[0m %s\n' "$*" >&2; }

# NativeAOT links with clang and needs zlib's headers; CMake drives the native part.
need=()
for pkg in clang zlib1g-dev cmake; do
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

if ! command -v dotnet >/dev/null 2>&1; then
  log "the .NET 10 SDK is required (dotnet not found on PATH); install it, then run ./build.sh again"
  exit 1
fi

log "publishing NativeAOT executable -> dist/fastserve"
mkdir -p build
if ! dotnet publish runtime/FastServe.Cli/FastServe.Cli.csproj -c Release -r linux-x64 -o dist -nologo -v q \
     -p:DebugType=none >build/publish.log 2>&1; then
  cat build/publish.log >&2
  log "publish failed"
  exit 1
fi
test -x dist/fastserve || { log "dist/fastserve was not produced"; exit 1; }

# Native kernels (CUDA): CMake reports and skips cleanly when no CUDA compiler is present.
if command -v cmake >/dev/null 2>&1; then
  cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release >build/native.log 2>&1 || { cat build/native.log >&2; exit 1; }
  cmake --build build/native -j"$(nproc)" >>build/native.log 2>&1 || { cat build/native.log >&2; exit 1; }
  grep -E '^-- FastServe' build/native.log >&2 || true
fi
log "done: $(dist/fastserve --version 2>/dev/null || echo dist/fastserve)"
