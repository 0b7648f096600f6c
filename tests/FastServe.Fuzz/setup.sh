#!/usr/bin/env bash
# Installs what tests/FastServe.Fuzz/run.sh needs and this machine lacks. Idempotent: cheap when all is present.
#   Debian packages: clang-14 (compiles the libFuzzer driver), libclang-rt-14-dev (libFuzzer's runtime,
#   libclang_rt.fuzzer-x86_64.a, which -fsanitize=fuzzer links).
#   .NET tool: SharpFuzz.CommandLine 2.3.0 (the `sharpfuzz` instrumenter), into build/fuzz/tools.
#   FASTSERVE_SKIP_APT=1  never call apt-get (report what is missing instead, and fail)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tools="$root/build/fuzz/tools"

log() { printf '\033[1m[fuzz-setup]\033[0m %s\n' "$*" >&2; }

need=()
for pkg in clang-14 libclang-rt-14-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "${FASTSERVE_SKIP_APT:-0}" = 1 ]; then
    log "missing packages: ${need[*]} (FASTSERVE_SKIP_APT=1, not installing)"
    exit 1
  fi
  log "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v dotnet >/dev/null 2>&1; then
  log "the .NET 10 SDK is required (dotnet not found on PATH)"
  exit 1
fi
if [ ! -x "$tools/sharpfuzz" ]; then
  log "installing the sharpfuzz tool (SharpFuzz.CommandLine 2.3.0) into build/fuzz/tools"
  mkdir -p "$tools"
  dotnet tool install --tool-path "$tools" SharpFuzz.CommandLine --version 2.3.0 >/dev/null
fi
