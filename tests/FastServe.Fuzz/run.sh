#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of the wire protocol codec (scheduler/FastServe.Protocol).
#   tests/FastServe.Fuzz/run.sh [SECONDS]     (default 60; 0 = only build and replay, needs no clang or apt)
# Builds tests/FastServe.Fuzz, instruments a copy of FastServe.Protocol.dll with SharpFuzz, compiles the libFuzzer
# driver (driver/libfuzzer_driver.c) and fuzzes FrameParseLoop for SECONDS, starting from corpus/ (checked in) and
# build/fuzz/corpus (what earlier runs found; new inputs go there, never into corpus/).
# First replays corpus/ and crashes/ without instrumentation (regressions).
# Exit 0: no crash. Exit 1: a failure; a crashing input is printed as hex and kept in build/fuzz/artifacts/.
#   FASTSERVE_FUZZ_ARGS   extra libFuzzer flags (e.g. "-seed=1 -max_len=65552")
set -uo pipefail
secs=${1:-60}
if ! [[ $secs =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [SECONDS]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/build/fuzz"
bin="$here/bin/Release/net10.0"
app="$out/app"

log() { printf '\033[1m[fuzz]\033[0m %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

mkdir -p "$out"

log "building tests/FastServe.Fuzz"
dotnet build "$here/FastServe.Fuzz.csproj" -c Release -nologo -v q >"$out/build.log" 2>&1 \
  || { cat "$out/build.log" >&2; die "build failed"; }

regress=("$here/corpus")
[ -d "$here/crashes" ] && regress+=("$here/crashes")
dotnet "$bin/FastServe.Fuzz.dll" replay "${regress[@]}" || die "replay of corpus/crashes failed"
[ "$secs" -eq 0 ] && exit 0
"$here/setup.sh" || die "setup failed"

# Instrument a copy, so the ordinary build output stays uninstrumented.
rm -rf "$app"
cp -r "$bin" "$app"
"$out/tools/sharpfuzz" "$app/FastServe.Protocol.dll" >"$out/instrument.log" 2>&1 \
  || { cat "$out/instrument.log" >&2; die "instrumentation failed"; }
clang-14 -O2 -fsanitize=fuzzer "$here/driver/libfuzzer_driver.c" -o "$out/driver" || die "driver build failed"
printf '#!/bin/sh\nexec dotnet "%s/FastServe.Fuzz.dll" fuzz\n' "$app" >"$out/target.sh"
chmod +x "$out/target.sh"

mkdir -p "$out/corpus"
rm -rf "$out/artifacts"
mkdir -p "$out/artifacts"
log "fuzzing for ${secs}s (log: build/fuzz/fuzz.log)"
# shellcheck disable=SC2086
FASTSERVE_FUZZ_TARGET="$out/target.sh" "$out/driver" -max_total_time="$secs" -timeout=10 -max_len=8192 \
  -print_final_stats=1 -artifact_prefix="$out/artifacts/" ${FASTSERVE_FUZZ_ARGS:-} \
  "$out/corpus" "$here/corpus" >"$out/fuzz.log" 2>&1
status=$?

grep -E '^(INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE))|^stat::' "$out/fuzz.log" >&2 || true
shopt -s nullglob
found=("$out"/artifacts/*)
if [ "$status" -eq 0 ] && [ ${#found[@]} -eq 0 ]; then
  printf 'seeds only: ' >&2
  dotnet "$app/FastServe.Fuzz.dll" coverage "$here/corpus" >&2 || true
  printf 'seeds + build/fuzz/corpus: ' >&2
  dotnet "$app/FastServe.Fuzz.dll" coverage "$here/corpus" "$out/corpus" >&2 || true
  log "no crash in ${secs}s"
  exit 0
fi
tail -n 40 "$out/fuzz.log" >&2
for f in "${found[@]}"; do
  log "failing input $(basename "$f") ($(stat -c %s "$f") bytes), hex:"
  od -An -tx1 -v "$f" | tr -d '\n' | tr -s ' ' | fold -w 96 >&2
  echo >&2
  dotnet "$bin/FastServe.Fuzz.dll" replay "$f" >&2 || true
done
log "FAILED (libFuzzer exit $status). Fix the codec, then keep the input: cp build/fuzz/artifacts/<file> tests/FastServe.Fuzz/crashes/"
exit 1
