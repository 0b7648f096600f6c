#!/usr/bin/env bash
# A glslc for the cooperative-matrix shaders (shaders/coopmat/*.comp, GL_KHR_cooperative_matrix), which Debian 12's
# glslc (shaderc 2023.2) refuses. Debian 13 (trixie) main's glslc compiles them; this fetches it and what it needs to
# run (libshaderc1, and trixie's libc6, libstdc++6 and libgcc-s1, newer than this system's) without installing
# anything, unpacks them into DIR and writes DIR/bin/glslc, a wrapper that runs that glslc through trixie's own dynamic
# loader and libraries, none of the host's. ./build.sh runs it with FASTSERVE_VULKAN_COOPMAT=1 (CI does).
#
#   native/vulkan/glslc-coopmat.sh [DIR]   DIR default $FASTSERVE_GLSLC_COOPMAT_DIR, else
#                                          ${XDG_CACHE_HOME:-$HOME/.cache}/fastserve/glslc-trixie; a second run reuses
#                                          what is there (seconds), without network too
#   FASTSERVE_DEBIAN_MIRROR, FASTSERVE_DEBIAN_KEYRING, FASTSERVE_DEBIAN_UNSIGNED=1: as in tools/debian-fetch.sh, which
#                                          fetches and verifies the packages (hostile until InRelease's signature, the
#                                          index's and each .deb's SHA256 check out)
#
# The packages are glslc and everything it depends on, read from the signed index (no fixed versions). Then checks
# that every library glslc loads resolves inside DIR, that `DIR/bin/glslc --version` runs, and that it compiles a
# small GL_KHR_cooperative_matrix shader for Vulkan 1.3.
# Output: progress on stderr; on stdout the wrapper's path, one line, exit 0; or
#   glslc-coopmat: FAIL (WHAT): ...  WHAT and exit code: setup 1, network 2, download 3, checksum 4, signature 5,
#                                    extract 6, run 7 (the unpacked glslc does not run), compile 8 (it runs but does
#                                    not compile the test shader)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
deb_name=glslc-coopmat
# shellcheck source=../../tools/debian-fetch.sh
. "$repo/tools/debian-fetch.sh"
deb_codes+=([run]=7 [compile]=8)
layout=1  # bump when what is unpacked or how changes, so a cached glslc is unpacked again

deb_init "${1:-${FASTSERVE_GLSLC_COOPMAT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fastserve/glslc-trixie}}" trixie main/binary-amd64/Packages.xz
root=$deb_dir/root wrapper=$deb_dir/bin/glslc
libdir=$root/usr/lib/x86_64-linux-gnu

pick_glslc() { deb_closure glslc; }

# Whole packages: the loader, libc, libstdc++, libgcc_s, libshaderc and glslc are most of what they hold.
unpack_glslc() {
  local stage=$1 pkg
  log "unpacking ${!deb_file[*]}"
  for pkg in "${!deb_file[@]}"; do
    deb_untar "${deb_file[$pkg]}" "$stage" || fail extract "$(basename "${deb_file[$pkg]}")"
  done
}

deb_fetch "$root" "$layout" pick_glslc unpack_glslc
loader=$libdir/ld-linux-x86-64.so.2
[ -f "$loader" ] && [ -x "$root/usr/bin/glslc" ] || fail extract "no loader or glslc in $root"

# The wrapper finds the unpacked tree relative to itself, so DIR can move. trixie's loader with --inhibit-cache and
# --library-path resolves every library in DIR first (checked below); the host's ld.so.cache is never read.
mkdir -p "$deb_dir/bin" || fail setup "cannot create $deb_dir/bin"
cat >"$wrapper.part" <<'EOF'
#!/bin/sh
# Debian 13's glslc, run through its own loader and libraries (written by native/vulkan/glslc-coopmat.sh).
root=$(cd "$(dirname "$(readlink -f "$0")")/../root" && pwd) || exit 127
lib=$root/usr/lib/x86_64-linux-gnu
exec "$lib/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$lib" "$root/usr/bin/glslc" "$@"
EOF
chmod +x "$wrapper.part" && mv "$wrapper.part" "$wrapper" || fail setup "cannot write $wrapper"

# Each library glslc needs must come from DIR: one the packages lack would be taken from the host, a mix that may
# run today and break with the next host update.
deps=$("$loader" --inhibit-cache --library-path "$libdir" --list "$root/usr/bin/glslc" 2>&1) || fail run "$loader --list glslc: $deps"
outside=$(awk '/=>/ {print $1, $3}' <<<"$deps" | awk -v r="$root/" 'index($2, r) != 1')
[ -z "$outside" ] || fail run "glslc loads libraries from outside $root: $(paste -sd, - <<<"$outside")"
version=$("$wrapper" --version 2>&1 | grep -E '^(shaderc|glslang) ' | paste -sd, - | sed 's/,/, /')
[[ "$version" == shaderc* ]] || fail run "$wrapper --version: $version"

tmp=$(mktemp -d) || fail setup "mktemp"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/coopmat.comp" <<'EOF'
#version 450
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
layout(local_size_x = 32) in;
layout(std430, binding = 0) buffer A { float16_t a[]; };
layout(std430, binding = 1) buffer C { float c[]; };
void main() {
  coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> ma;
  coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> mb;
  coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> mc = coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
  coopMatLoad(ma, a, 0, 16, gl_CooperativeMatrixLayoutRowMajor);
  coopMatLoad(mb, a, 0, 16, gl_CooperativeMatrixLayoutColumnMajor);
  mc = coopMatMulAdd(ma, mb, mc);
  coopMatStore(mc, c, 0, 16, gl_CooperativeMatrixLayoutRowMajor);
}
EOF
out=$("$wrapper" -O --target-env=vulkan1.3 -Werror -o "$tmp/coopmat.spv" "$tmp/coopmat.comp" 2>&1) \
  || fail compile "$version does not compile a GL_KHR_cooperative_matrix shader: $(head -3 <<<"$out" | paste -sd' ' -)"
[ -s "$tmp/coopmat.spv" ] || fail compile "$version wrote no SPIR-V for the test shader"

log "$version: compiles GL_KHR_cooperative_matrix$([ "$deb_offline" = 1 ] && echo ' (offline, cached)')"
echo "$wrapper"
