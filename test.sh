#!/usr/bin/env bash
# Runs the test suite and ends with one line: "N passed, N failed, N skipped".
# Builds first (./build.sh), since the end-to-end tests drive the published dist/fastserve (and refuse a stale one).
#   ./test.sh                   everything: the NUnit tests, the fuzz run, and the CUDA 12.4 check where it is on
#   ./test.sh FILTER            only the NUnit tests FILTER selects (dotnet test --filter syntax, e.g.
#                               "FullyQualifiedName~Router"); no fuzz run or CUDA 12.4 check unless asked for with
#                               FASTSERVE_FUZZ=1 or FASTSERVE_CUDA12_CHECK=1. A filter that selects nothing fails.
#   FASTSERVE_FUZZ=0|1          skip or force the fuzz run; FASTSERVE_FUZZ_SECONDS its length (default 60)
#   FASTSERVE_CUDA12_CHECK=0|1  skip or force the CUDA 12.4 compile check (on by default only under CI=true)
#   FASTSERVE_VULKAN_COOPMAT=1  (set by .ci/run under CI) also fetch a lavapipe that offers VK_KHR_cooperative_matrix
#                               (native/vulkan/lavapipe-coopmat.sh, cached per machine) and set
#                               FASTSERVE_LAVAPIPE_COOPMAT to its wrapper, so tests/FastServe.Tests/Vulkan runs the
#                               cooperative-matrix shader; where the fetch fails those tests are skipped, saying why
set -uo pipefail
cd "$(dirname "$0")"

if [ $# -gt 1 ] || [[ ${1:-} == -* ]]; then
  echo "usage: ./test.sh [FILTER]   (FILTER: a dotnet test --filter expression, e.g. \"FullyQualifiedName~Cli\")" >&2
  exit 2
fi
filter=${1:-}

./build.sh || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }

# Real peers the end-to-end tests talk to over loopback (HAProxy for the agent check, dnsmasq for DNS discovery),
# python3 for the tests of bench/gpu/fastserve_abi.py (the GPU scripts' view of the C ABI), and qemu-user, whose
# qemu-x86_64 -cpu Haswell|Nehalem|... runs dist/fastserve as on processors without AVX-512 or AVX2
# (tests/FastServe.Tests/Portability, docs/portability.md).
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v qemu-x86_64 >/dev/null 2>&1 || need+=(qemu-user)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ] && [ "${FASTSERVE_SKIP_APT:-0}" != 1 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"; }
fi

# The official `openai` npm client that tests/FastServe.Tests/Http drives against the HTTP front door: installed from
# tests/http-clients/package-lock.json (pinned) when missing. wrk for bench/router/http-bench.sh, curl for raw checks.
if [ ! -d tests/http-clients/node_modules/openai ] && command -v npm >/dev/null 2>&1; then
  (cd tests/http-clients && npm ci --no-audit --no-fund --silent) || echo "test.sh: npm ci in tests/http-clients failed; the openai-client tests will fail" >&2
fi

# A lavapipe with VK_KHR_cooperative_matrix for the tests that run the cooperative-matrix shader (built only with
# FASTSERVE_VULKAN_COOPMAT=1). Not fatal: that lavapipe comes from Debian 13 backports, whose index a stale mirror can
# let expire; the tests then report themselves skipped with the reason below.
if [ "${FASTSERVE_VULKAN_COOPMAT:-0}" = 1 ] && [ -z "${FASTSERVE_LAVAPIPE_COOPMAT:-}" ]; then
  mkdir -p build
  if lavapipe_out=$(native/vulkan/lavapipe-coopmat.sh 2>build/lavapipe-coopmat.log); then
    export FASTSERVE_LAVAPIPE_COOPMAT=$lavapipe_out
    echo "test.sh: cooperative-matrix tests run on $(tail -1 build/lavapipe-coopmat.log | sed 's/^\[[^]]*\] //')" >&2
  else
    echo "test.sh: no lavapipe with VK_KHR_cooperative_matrix, its tests will be skipped: $lavapipe_out (log: build/lavapipe-coopmat.log)" >&2
  fi
fi

log=$(mktemp)
filter_args=()
[ -n "$filter" ] && filter_args=(--filter "$filter")
dotnet test FastServe.sln -c Release -nologo --logger "console;verbosity=normal" "${filter_args[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# Each test assembly ends with "Total tests: N" then "Passed: N", "Failed: N", "Skipped: N" lines (zeros omitted).
read -r passed failed skipped < <(awk '
  /^ *Passed: +[0-9]+ *$/  { p += $2 }
  /^ *Failed: +[0-9]+ *$/  { f += $2 }
  /^ *Skipped: +[0-9]+ *$/ { s += $2 }
  END { printf "%d %d %d\n", p, f, s }' "$log")
rm -f "$log"
if [ -n "$filter" ] && [ $((passed + failed + skipped)) -eq 0 ]; then
  echo "test.sh: no test matches the filter: $filter" >&2
  failed=$((failed + 1))
fi
# Coverage-guided fuzzing of the wire-protocol frame parser (SharpFuzz + libFuzzer) for a bounded time; counted as one
# test. On by default, off with a filter, FASTSERVE_FUZZ=0|1 overrides both.
fuzz=${FASTSERVE_FUZZ:-}
[ -n "$fuzz" ] || { [ -n "$filter" ] && fuzz=0 || fuzz=1; }
if [ "$fuzz" = 1 ]; then
  if tests/FastServe.Fuzz/run.sh "${FASTSERVE_FUZZ_SECONDS:-60}"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
fi
# The offline model tooling's Python unit tests (tools/gec: error injection, data cleaning, the BPE trainer; standard
# library only), counted one by one. On by default, off with a filter, FASTSERVE_PYTHON_TESTS=0|1 overrides both.
pyt=${FASTSERVE_PYTHON_TESTS:-}
[ -n "$pyt" ] || { [ -n "$filter" ] && pyt=0 || pyt=1; }
if [ "$pyt" = 1 ]; then
  pyout=$(cd tools/gec && python3 -m unittest discover -s . 2>&1); pyrc=$?
  echo "$pyout" | tail -n 3
  ran=$(sed -n 's/^Ran \([0-9][0-9]*\) tests\{0,1\} in .*/\1/p' <<<"$pyout")
  pyfail=$(( $(grep -o 'failures=[0-9]*' <<<"$pyout" | cut -d= -f2 || true) + $(grep -o 'errors=[0-9]*' <<<"$pyout" | cut -d= -f2 || true) + 0 ))
  pyskip=$(( $(grep -o 'skipped=[0-9]*' <<<"$pyout" | cut -d= -f2 || true) + 0 ))
  if [ -z "$ran" ]; then failed=$((failed + 1))
  else
    passed=$((passed + ran - pyfail - pyskip)); failed=$((failed + pyfail)); skipped=$((skipped + pyskip))
    [ "$pyrc" -eq 0 ] || [ "$pyfail" -gt 0 ] || failed=$((failed + 1))
  fi
fi
# The FP8 mma path compiled with CUDA 12.4 (native/cuda12-check.sh: trixie's toolkit, unpacked under build/cuda-12.4
# or $FASTSERVE_CUDA12_DIR, never installed; about 2 min the first time, 1 min with the toolkit cached), counted as one
# test. It runs with FASTSERVE_CUDA12_CHECK=1, and under CI without a filter unless FASTSERVE_CUDA12_CHECK=0; otherwise
# it is not counted at all.
if [ "${FASTSERVE_CUDA12_CHECK:-}" = 1 ] || { [ -z "$filter" ] && [ "${CI:-}" = true ] && [ "${FASTSERVE_CUDA12_CHECK:-}" != 0 ]; }; then
  if native/cuda12-check.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
fi
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
