#!/usr/bin/env bash
# Runs the wire probe against two fastserve binaries and diffs the transcripts (exit 0: identical).
#   tests/wire-probe/compare.sh OLD_BINARY NEW_BINARY [probe.py options, e.g. --only hello,ping]
# e.g. keep a copy of the binary built before a change:  cp dist/fastserve /tmp/fastserve-old
#      then, after rebuilding:                              tests/wire-probe/compare.sh /tmp/fastserve-old dist/fastserve
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY [probe options]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
old=$1 new=$2
shift 2
out=$(mktemp -d /tmp/wire-probe.XXXXXX)
python3 "$here/probe.py" --bin "$old" --out "$out/old.txt" "$@"
python3 "$here/probe.py" --bin "$new" --out "$out/new.txt" "$@"
if diff -u "$out/old.txt" "$out/new.txt"; then
  echo "identical: $(grep -c '^\[' "$out/old.txt") cases ($out)"
else
  echo "the transcripts differ ($out)" >&2
  exit 1
fi
