#!/usr/bin/env bash
# A lavapipe that offers VK_KHR_cooperative_matrix, so the cooperative-matrix MatMul (shaders/coopmat/) runs in CI
# with no GPU. Debian 12's Mesa 22.3 lacks the extension; Debian 13's backports carry a Mesa whose lavapipe has it.
# This fetches that mesa-vulkan-drivers and what it needs to run (the Vulkan loader, LLVM, and trixie's libc6 and
# libstdc++6, newer than this system's) without installing anything, unpacks them into DIR, points the lavapipe ICD
# manifest at the unpacked driver, and writes DIR/bin/with-lavapipe:
#
#   DIR/bin/with-lavapipe PROGRAM [ARG...]   runs the ELF executable PROGRAM (not a script, and not a launcher that
#                                            execs another binary: that one would run on the host's libraries) through
#                                            trixie's dynamic loader with DIR's libraries first, and with the Vulkan
#                                            loader told to use that lavapipe alone (VK_DRIVER_FILES). A program it
#                                            starts in turn runs on the host's libraries again.
#
#   native/vulkan/lavapipe-coopmat.sh [DIR]  DIR default $FASTSERVE_LAVAPIPE_COOPMAT_DIR, else
#                                            ${XDG_CACHE_HOME:-$HOME/.cache}/fastserve/lavapipe-trixie; a second run
#                                            reuses what is there (seconds), without network too
#   FASTSERVE_DEBIAN_MIRROR, FASTSERVE_DEBIAN_KEYRING, FASTSERVE_DEBIAN_UNSIGNED=1: as in tools/debian-fetch.sh, which
#                                            fetches and verifies the packages (trixie-backports and trixie, each
#                                            InRelease signed, each index and .deb checked against its SHA256)
#
# The packages are mesa-vulkan-drivers and libvulkan1 and everything they depend on, read from the signed indexes (no
# fixed versions; the newest of the two suites wins). Then checks that every library the driver loads resolves inside
# DIR and that the driver's version is one whose lavapipe lists the extension (Mesa 25.1 or later).
# Output: progress on stderr; on stdout the wrapper's path, one line, exit 0; or
#   lavapipe-coopmat: FAIL (WHAT): ...  WHAT and exit code: setup 1, network 2, download 3, checksum 4, signature 5,
#                                       extract 6, run 7 (the unpacked driver's libraries do not resolve inside DIR),
#                                       version 8 (the suites carry no Mesa whose lavapipe has the extension)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
deb_name=lavapipe-coopmat
# shellcheck source=../../tools/debian-fetch.sh
. "$repo/tools/debian-fetch.sh"
deb_codes+=([run]=7 [version]=8)
layout=1 # bump when what is unpacked or how changes, so a cached driver is unpacked again

deb_init "${1:-${FASTSERVE_LAVAPIPE_COOPMAT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fastserve/lavapipe-trixie}}" \
  "trixie-backports trixie" main/binary-amd64/Packages.xz
root=$deb_dir/root wrapper=$deb_dir/bin/with-lavapipe
libdir=$root/usr/lib/x86_64-linux-gnu

pick_lavapipe() {
  local line
  line=$(deb_pick mesa-vulkan-drivers)
  [ -n "$line" ] || fail version "no mesa-vulkan-drivers in $deb_suite"
  dpkg --compare-versions "$(cut -d' ' -f2 <<<"$line")" ge 25.1 \
    || fail version "the newest mesa-vulkan-drivers in $deb_suite is $(cut -d' ' -f2 <<<"$line"); lavapipe lists VK_KHR_cooperative_matrix from Mesa 25.1"
  deb_closure mesa-vulkan-drivers libvulkan1
}

# Whole packages, but the driver package holds every Mesa Vulkan driver: only lavapipe and its manifest are kept.
unpack_lavapipe() {
  local stage=$1 pkg
  log "unpacking ${!deb_file[*]}"
  for pkg in "${!deb_file[@]}"; do
    if [ "$pkg" = mesa-vulkan-drivers ]; then
      deb_untar "${deb_file[$pkg]}" "$stage" ./usr/lib/x86_64-linux-gnu/libvulkan_lvp.so ./usr/share/vulkan/icd.d/lvp_icd.json \
        || fail extract "$(basename "${deb_file[$pkg]}")"
    else
      deb_untar "${deb_file[$pkg]}" "$stage" || fail extract "$(basename "${deb_file[$pkg]}")"
    fi
  done
  # A relative library_path is resolved against the manifest's folder, so DIR can move.
  local manifest=$stage/usr/share/vulkan/icd.d/lvp_icd.json
  [ -f "$manifest" ] || fail extract "no lvp_icd.json in mesa-vulkan-drivers"
  sed -i 's|"library_path": *"[^"]*"|"library_path": "../../../lib/x86_64-linux-gnu/libvulkan_lvp.so"|' "$manifest" \
    || fail extract "cannot rewrite $manifest"
}

deb_fetch "$root" "$layout" pick_lavapipe unpack_lavapipe
loader=$libdir/ld-linux-x86-64.so.2 driver=$libdir/libvulkan_lvp.so
[ -f "$loader" ] && [ -f "$driver" ] && [ -f "$libdir/libvulkan.so.1" ] || fail extract "no loader, lavapipe or libvulkan in $root"

mkdir -p "$deb_dir/bin" || fail setup "cannot create $deb_dir/bin"
cat >"$wrapper.part" <<'EOF'
#!/bin/sh
# Runs an ELF executable on Debian 13's loader and libraries, with the Vulkan loader limited to the lavapipe unpacked
# beside them (written by native/vulkan/lavapipe-coopmat.sh).
[ $# -ge 1 ] || { echo "usage: with-lavapipe PROGRAM [ARG...]" >&2; exit 2; }
root=$(cd "$(dirname "$(readlink -f "$0")")/../root" && pwd) || exit 127
lib=$root/usr/lib/x86_64-linux-gnu
VK_DRIVER_FILES=$root/usr/share/vulkan/icd.d/lvp_icd.json VK_ICD_FILENAMES=$root/usr/share/vulkan/icd.d/lvp_icd.json \
  exec "$lib/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$lib" "$@"
EOF
chmod +x "$wrapper.part" && mv "$wrapper.part" "$wrapper" || fail setup "cannot write $wrapper"

# Each library the driver needs must come from DIR: one the packages lack would be taken from the host, built for an
# older libc than the driver's.
deps=$("$loader" --inhibit-cache --library-path "$libdir" --list "$driver" 2>&1) || fail run "$loader --list $driver: $deps"
missing=$(grep -i 'not found' <<<"$deps" | awk '{print $1}')
[ -z "$missing" ] || fail run "lavapipe needs libraries the packages lack: $(paste -sd, - <<<"$missing")"
outside=$(awk '/=>/ {print $1, $3}' <<<"$deps" | awk -v r="$root/" 'index($2, r) != 1')
[ -z "$outside" ] || fail run "lavapipe loads libraries from outside $root: $(paste -sd, - <<<"$outside")"

version=$(sed -n 's/^mesa-vulkan-drivers_\([^_]*\)_.*/\1/p' <<<"$(basename "${deb_file[mesa-vulkan-drivers]:-}")")
[ -n "$version" ] || version=$(grep -o 'mesa-vulkan-drivers_[^_]*' "$deb_stamp" | head -1 | cut -d_ -f2)
log "lavapipe from Mesa ${version:-?}$([ "$deb_offline" = 1 ] && echo ' (cached)')"
echo "$wrapper"
