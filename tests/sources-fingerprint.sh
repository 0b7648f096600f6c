#!/usr/bin/env bash
# Prints one SHA-256 (hex) over the sources dist/fastserve is published from, by content and path only (never
# mtimes, so a fresh clone and an old checkout of the same tree agree). build.sh stamps it next to the binary
# (dist/fastserve.sources-sha256); the end-to-end tests (tests/FastServe.Tests/DistBinary.cs) recompute it and refuse
# a binary whose stamp differs, so `dotnet test` after an edit cannot silently test an old build.
#   tests/sources-fingerprint.sh [ROOT]    ROOT: the checkout (default: the one holding this script)
# Covered: every file under runtime/, scheduler/ and interop/ (what the SDK compiles or embeds, tracked or not) but
# bin/, obj/, *.md, dot files and editor leftovers (*~, *.swp); and the root's build policy files. The list of
# "sha256  path" lines, sorted by path in the C locale, is hashed again.
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
dirs=()
for d in runtime scheduler interop; do [ -d "$d" ] && dirs+=("$d"); done
{
  for f in Directory.Build.props Directory.Build.targets Directory.Packages.props global.json NuGet.Config nuget.config; do
    if [ -f "$f" ]; then printf '%s\0' "$f"; fi
  done
  if [ ${#dirs[@]} -gt 0 ]; then
    find "${dirs[@]}" \( -name bin -o -name obj -o -name '.*' \) -prune -o \
      -type f ! -name '*.md' ! -name '*~' ! -name '*.swp' -print0
  fi
} | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1
