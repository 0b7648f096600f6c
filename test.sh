#!/usr/bin/env bash
# Runs the whole test suite and ends with one line: "N passed, N failed, N skipped".
# Builds first (./build.sh), since the end-to-end tests drive the published dist/fastserve.
set -uo pipefail
cd "$(dirname "$0")"

./build.sh || { echo "0 passed, 1 failed"; exit 1; }

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
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
