#!/usr/bin/env bash
# Runs the whole test suite and ends with one line: "N passed, N failed, N skipped".
# Builds first (./build.sh), since the end-to-end tests drive the published dist/fastserve.
set -uo pipefail
cd "$(dirname "$0")"

./build.sh || { echo "0 passed, 1 failed"; exit 1; }

# Real peers the end-to-end tests talk to over loopback (HAProxy for the agent check, dnsmasq for DNS discovery).
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ] && [ "${FASTSERVE_SKIP_APT:-0}" != 1 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"; }
fi

log=$(mktemp)
dotnet test FastServe.sln -c Release -nologo --logger "console;verbosity=normal" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# Each test assembly ends with "Total tests: N" then "Passed: N", "Failed: N", "Skipped: N" lines (zeros omitted).
read -r passed failed skipped < <(awk '
  /^ *Passed: +[0-9]+ *$/  { p += $2 }
  /^ *Failed: +[0-9]+ *$/  { f += $2 }
  /^ *Skipped: +[0-9]+ *$/ { s += $2 }
  END { printf "%d %d %d\n", p, f, s }' "$log")
rm -f "$log"
# Coverage-guided fuzzing of the wire-protocol frame parser (SharpFuzz + libFuzzer) for a bounded time; counted as one test.
if tests/FastServe.Fuzz/run.sh "${FASTSERVE_FUZZ_SECONDS:-60}"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
# The FP8 mma path compiled with CUDA 12.4 (native/cuda12-check.sh: trixie's toolkit, unpacked under build/cuda-12.4
# or $FASTSERVE_CUDA12_DIR, never installed; about 2 min the first time, 1 min with the toolkit cached), counted as one test. It runs with FASTSERVE_CUDA12_CHECK=1 and
# under CI unless FASTSERVE_CUDA12_CHECK=0; otherwise it is not counted at all.
if [ "${FASTSERVE_CUDA12_CHECK:-}" = 1 ] || { [ "${CI:-}" = true ] && [ "${FASTSERVE_CUDA12_CHECK:-}" != 0 ]; }; then
  if native/cuda12-check.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
fi
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
