#!/usr/bin/env bash
# Compile check of the FP8 fast path with CUDA 12.4 (docs/cuda.md). Debian 12's nvcc 11.8 builds only the portable
# FP8 path; the E4M3 mma needs nvcc >= 12.4, which Debian 13 (trixie) ships in non-free. This fetches that toolkit's
# packages without installing them, builds libfastserve_cuda.so with it for sm_89 and sm_90a into DIR (never dist/),
# and checks the result. Nothing runs on a GPU.
#
#   native/cuda12-check.sh [DIR]     DIR: cache, toolkit, build tree and library (default build/cuda-12.4, or
#                                    $FASTSERVE_CUDA12_DIR); a second run reuses what is there
#   FASTSERVE_DEBIAN_MIRROR          default http://deb.debian.org/debian
#   FASTSERVE_DEBIAN_KEYRING         default /usr/share/keyrings/debian-archive-keyring.gpg
#   FASTSERVE_CUDA12_UNSIGNED=1      go on when the signature cannot be checked (no gpgv or keyring) or no key in the
#                                    keyring verifies it; the SHA256 chain then only proves that the packages match an
#                                    unauthenticated index. Without it that is a failure: falling back on its own
#                                    would let a server that strips or replaces the signature skip the check.
#
# Everything downloaded is treated as hostile: InRelease's signature is checked with gpgv against Debian's archive
# keyring (bookworm's debian-archive-keyring has the trixie keys), Packages.xz against the SHA256 in the signed part
# of InRelease, each .deb against the SHA256 and size in Packages. Only then is anything unpacked.
#
# Steps: fetch and verify (network), unpack nvcc, ptxas, headers and the static runtime (about 30 s for the 900 MB
# nvidia-cuda-dev), configure and build the library for 89-real;90a-real, then check
#   (a) FP8: matmul.cu's PTX for compute_89 and compute_90a holds mma.sync ... e4m3, and the library's matmul SASS has
#       QMMA ... E4M3 on sm_89 (native FP8 tensor cores) and on sm_90a the E4M3 unpack + F16 HMMA that ptxas lowers
#       mma.sync e4m3 to on Hopper (Hopper's FP8 tensor-core rate is wgmma's only);
#   (b) nm -D: the same exported symbols as dist/libfastserve_cuda.so (or, without it, the header's FS_API list);
#   (c) the CTests (smoke: the 12.4 library loads, no device; the CPU conversion test) in the 12.4 build tree.
# Output: progress on stderr, one result line on stdout:
#   cuda12-check: PASS ...          exit 0
#   cuda12-check: FAIL (WHAT): ...  WHAT and exit code: setup 1, network 2, download 3, checksum 4, signature 5,
#                                   extract 6, compile 7, fp8 8, exports 9, tests 10
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
dir=${1:-${FASTSERVE_CUDA12_DIR:-$repo/build/cuda-12.4}}
mirror=${FASTSERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=${FASTSERVE_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
suite=trixie
index_path=non-free/binary-amd64/Packages.xz
archs="89-real;90a-real"
layout=1  # bump when what is unpacked or how changes, so a cached toolkit is unpacked again
start=$SECONDS

log() { printf '[cuda12-check] %s\n' "$*" >&2; }
fail() {
  local what=$1 code
  shift
  case $what in
    setup) code=1 ;; network) code=2 ;; download) code=3 ;; checksum) code=4 ;; signature) code=5 ;;
    extract) code=6 ;; compile) code=7 ;; fp8) code=8 ;; exports) code=9 ;; tests) code=10 ;; *) code=1 ;;
  esac
  echo "cuda12-check: FAIL ($what): $*"
  exit "$code"
}

for tool in curl xz dpkg dpkg-deb tar sha256sum cmake nm awk; do
  command -v "$tool" >/dev/null 2>&1 || fail setup "$tool is not installed"
done
mkdir -p "$dir" || fail setup "cannot create $dir"
dir=$(cd "$dir" && pwd)
[ "$dir/dist" != "$repo/dist" ] || fail setup "DIR would put the library in $repo/dist; pick another DIR"
meta=$dir/meta debs=$dir/debs root=$dir/root build=$dir/build out=$dir/dist
mkdir -p "$meta" "$debs"

# One run at a time per DIR.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir/.lock"
  flock -n 9 || { log "waiting for another run using $dir"; flock 9; }
fi

# fetch URL FILE [MAX_BYTES]: FILE only appears complete; the result says whether the network or the server failed.
fetch() {
  local url=$1 file=$2 max=${3:-} rc
  rm -f "$file.part"
  curl -fsSL --proto '=http,https' --proto-redir '=http,https' --connect-timeout 20 --retry 2 --retry-delay 2 \
    --speed-limit 10240 --speed-time 60 ${max:+--max-filesize "$max"} -o "$file.part" "$url"
  rc=$?
  if [ $rc -ne 0 ]; then
    rm -f "$file.part"
    case $rc in
      5 | 6 | 7 | 28 | 35 | 52 | 55 | 56) return 2 ;;  # resolve, connect, timeout, TLS, empty reply, send, receive
      *) return 3 ;;
    esac
  fi
  mv "$file.part" "$file"
}
sha256_of() { sha256sum "$1" | awk '{print $1}'; }
size_of() { stat -c %s "$1"; }

stamp_file=$root/.fastserve-toolkit
offline=0

# --- 1. InRelease: signature, then the SHA256 of the package index ----------------------------------------------------
log "fetching $mirror/dists/$suite/InRelease"
fetch "$mirror/dists/$suite/InRelease" "$meta/InRelease" 4194304
rc=$?
if [ $rc -ne 0 ]; then
  if [ $rc -eq 2 ] && [ -f "$stamp_file" ]; then
    offline=1
    log "no network ($mirror unreachable): reusing the toolkit verified on $(sed -n 's/^verified=//p' "$stamp_file")"
  elif [ $rc -eq 2 ]; then
    fail network "cannot reach $mirror (no network?) and no toolkit is cached in $dir"
  else
    fail download "$mirror/dists/$suite/InRelease"
  fi
fi

if [ $offline = 0 ]; then
  signed=$meta/InRelease.signed
  rm -f "$signed"
  if command -v gpgv >/dev/null 2>&1 && [ -r "$keyring" ]; then
    gpgv --keyring "$keyring" --status-fd 3 --output "$signed" "$meta/InRelease" 3>"$meta/gpgv.status" 2>"$meta/gpgv.log"
    good=$(grep -c '^\[GNUPG:\] GOODSIG ' "$meta/gpgv.status")
    bad=$(grep -c '^\[GNUPG:\] BADSIG ' "$meta/gpgv.status")
    if [ "$bad" -gt 0 ]; then
      fail signature "InRelease has a bad signature ($(grep '^\[GNUPG:\] BADSIG ' "$meta/gpgv.status" | head -1 | cut -d' ' -f3-))"
    elif [ "$good" -gt 0 ] && [ -s "$signed" ]; then
      log "InRelease: $good good signature(s): $(grep '^\[GNUPG:\] GOODSIG ' "$meta/gpgv.status" | cut -d' ' -f4- | sed 's/ <.*//' | paste -sd';' | sed 's/;/; /g')"
    elif [ "${FASTSERVE_CUDA12_UNSIGNED:-0}" = 1 ]; then
      log "WARNING: no key in $keyring verifies InRelease; FASTSERVE_CUDA12_UNSIGNED=1, so relying on the SHA256 chain of an unauthenticated index"
      signed=""
    else
      fail signature "no key in $keyring verifies $mirror/dists/$suite/InRelease ($(grep -oE '(NO_PUBKEY|EXPKEYSIG|REVKEYSIG|ERRSIG) [0-9A-F]+' "$meta/gpgv.status" | paste -sd, -)); update debian-archive-keyring, or FASTSERVE_CUDA12_UNSIGNED=1"
    fi
  elif [ "${FASTSERVE_CUDA12_UNSIGNED:-0}" = 1 ]; then
    log "WARNING: signature NOT checked (no gpgv or no $keyring); FASTSERVE_CUDA12_UNSIGNED=1, so relying on the SHA256 chain of an unauthenticated index"
    signed=""
  else
    fail signature "cannot check InRelease's signature: no gpgv or no $keyring (apt-get install gpgv debian-archive-keyring, or FASTSERVE_CUDA12_UNSIGNED=1)"
  fi
  if [ -z "$signed" ]; then
    # The cleartext part of the signed message, dash-escaping undone.
    signed=$meta/InRelease.unverified
    awk '/^-----BEGIN PGP SIGNED MESSAGE-----/ {hdr=1; next} hdr && /^$/ {hdr=0; body=1; next} hdr {next}
         /^-----BEGIN PGP SIGNATURE-----/ {exit} body {sub(/^- /, ""); print}' "$meta/InRelease" >"$signed"
  fi
  codename=$(sed -n 's/^Codename: //p' "$signed" | head -1)
  [ "$codename" = "$suite" ] || fail signature "InRelease is for '$codename', not $suite"
  valid_until=$(sed -n 's/^Valid-Until: //p' "$signed" | head -1)
  if [ -n "$valid_until" ] && [ "$(date -d "$valid_until" +%s 2>/dev/null || echo 0)" -lt "$(date +%s)" ]; then
    fail signature "InRelease expired ($valid_until)"
  fi
  read -r index_sha index_size < <(awk -v p="$index_path" '/^[^ ]/ {in_sha = ($1 == "SHA256:")} in_sha && $3 == p {print $1, $2; exit}' "$signed")
  [[ "${index_sha:-}" =~ ^[0-9a-f]{64}$ && "${index_size:-}" =~ ^[0-9]+$ ]] || fail checksum "InRelease lists no SHA256 for $index_path"

  # --- 2. Packages.xz, by hash where the archive offers it (no race with a mirror update) ------------------------------
  by_hash_url="$mirror/dists/$suite/${index_path%/*}/by-hash/SHA256/$index_sha"
  plain_url="$mirror/dists/$suite/$index_path"
  url=$plain_url
  grep -q '^Acquire-By-Hash: yes' "$signed" && url=$by_hash_url
  log "fetching $index_path ($index_size bytes)"
  fetch "$url" "$meta/Packages.xz" "$index_size"
  rc=$?
  if [ $rc -eq 3 ] && [ "$url" != "$plain_url" ]; then fetch "$plain_url" "$meta/Packages.xz" "$index_size"; rc=$?; fi
  [ $rc -eq 2 ] && fail network "lost $mirror while fetching $index_path"
  [ $rc -ne 0 ] && fail download "$index_path"
  [ "$(size_of "$meta/Packages.xz")" = "$index_size" ] && [ "$(sha256_of "$meta/Packages.xz")" = "$index_sha" ] \
    || { rm -f "$meta/Packages.xz"; fail checksum "$index_path does not match InRelease's SHA256"; }
  xz -dc "$meta/Packages.xz" >"$meta/Packages" || fail checksum "$index_path does not decompress"

  # --- 3. Which packages: the newest nvidia-cuda-toolkit, and the nvidia-cuda-dev it depends on -------------------------
  # Fields of one package version: "Version Filename Size SHA256 Depends", one line per version.
  stanzas() {
    awk -v want="$1" 'BEGIN {RS = ""; FS = "\n"}
      { pkg = ver = fn = size = sha = dep = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Package: /) pkg = substr($i, 10)
          else if ($i ~ /^Version: /) ver = substr($i, 10)
          else if ($i ~ /^Filename: /) fn = substr($i, 11)
          else if ($i ~ /^Size: /) size = substr($i, 7)
          else if ($i ~ /^SHA256: /) sha = substr($i, 9)
          else if ($i ~ /^Depends: /) { dep = substr($i, 10); gsub(/ /, "", dep) }
        }
        if (pkg == want) print ver, fn, size, sha, dep }' "$meta/Packages"
  }
  pick() {  # pick PACKAGE [VERSION]: that version, or the newest
    local best="" line ver
    while read -r line; do
      ver=${line%% *}
      if [ -n "${2:-}" ]; then
        [ "$ver" = "$2" ] && best=$line
      elif [ -z "$best" ] || dpkg --compare-versions "$ver" gt "${best%% *}"; then
        best=$line
      fi
    done < <(stanzas "$1")
    echo "$best"
  }
  toolkit=$(pick nvidia-cuda-toolkit)
  [ -n "$toolkit" ] || fail download "no nvidia-cuda-toolkit in $suite's $index_path"
  dev_version=$(echo "$toolkit" | awk '{print $5}' | grep -oE '(^|,)nvidia-cuda-dev\(=[^)]+\)' | sed 's/.*(=//; s/)//')
  [ -n "$dev_version" ] || fail download "nvidia-cuda-toolkit does not depend on an exact nvidia-cuda-dev version"
  dev=$(pick nvidia-cuda-dev "$dev_version")
  [ -n "$dev" ] || fail download "nvidia-cuda-dev $dev_version is not in $index_path"
  wanted=()
  for entry in "$toolkit" "$dev"; do
    read -r ver fn size sha _ <<<"$entry"
    # Hostile index: a pool path without "..", a plain SHA256 and size.
    [[ "$fn" =~ ^pool/[A-Za-z0-9._+~/-]+\.deb$ && "$fn" != *..* && "$sha" =~ ^[0-9a-f]{64}$ && "$size" =~ ^[0-9]+$ ]] \
      || fail checksum "implausible entry in $index_path: $fn $size $sha"
    wanted+=("$(basename "$fn") $sha $size $fn")
  done
  want_stamp=$(printf 'layout=%s\n' "$layout"; printf '%s\n' "${wanted[@]}" | awk '{print $1, $2}')
  log "packages: $(printf '%s\n' "${wanted[@]}" | awk '{printf "%s%s (%d MB)", (NR > 1 ? ", " : ""), $1, $3 / 1048576}')"

  # --- 4. Download (or reuse) and unpack, unless this exact set is already unpacked ----------------------------------
  if [ -f "$stamp_file" ] && [ "$(grep -v '^verified=' "$stamp_file")" = "$want_stamp" ]; then
    log "toolkit already unpacked in $root"
  else
    for entry in "${wanted[@]}"; do
      read -r name sha size fn <<<"$entry"
      if [ -f "$debs/$name" ] && [ "$(size_of "$debs/$name")" = "$size" ] && [ "$(sha256_of "$debs/$name")" = "$sha" ]; then
        log "$name: cached"
        continue
      fi
      log "downloading $name ($((size / 1048576)) MB)"
      t0=$SECONDS
      fetch "$mirror/$fn" "$debs/$name" "$size"
      rc=$?
      [ $rc -eq 2 ] && fail network "lost $mirror while fetching $name"
      [ $rc -ne 0 ] && fail download "$mirror/$fn"
      if [ "$(size_of "$debs/$name")" != "$size" ] || [ "$(sha256_of "$debs/$name")" != "$sha" ]; then
        rm -f "$debs/$name"
        fail checksum "$name does not match the SHA256 in $index_path"
      fi
      log "$name: $((SECONDS - t0)) s, SHA256 ok"
    done
    # Older versions' packages are of no further use.
    for f in "$debs"/*.deb; do
      [ -e "$f" ] || continue
      printf '%s\n' "${wanted[@]}" | awk '{print $1}' | grep -qxF "$(basename "$f")" || rm -f "$f"
    done

    log "unpacking nvcc, ptxas, cuobjdump, headers and the static runtime (about 30 s: the 900 MB package is decompressed whole)"
    t0=$SECONDS
    rm -rf "$root.new" && mkdir -p "$root.new"
    untar() {  # untar DEB PATTERN...: only members matching a pattern; every pattern must match something
      local deb=$1
      shift
      dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$root.new" --no-same-owner --wildcards \
        --exclude='*/nvcc.profile' --exclude=./usr/bin/nvcc --exclude=./usr/bin/compute-sanitizer "$@"
      local st=("${PIPESTATUS[@]}")
      [ "${st[0]}" = 0 ] && [ "${st[1]}" = 0 ]
    }
    tk_deb=$debs/$(echo "${wanted[0]}" | awk '{print $1}')
    dev_deb=$debs/$(echo "${wanted[1]}" | awk '{print $1}')
    untar "$tk_deb" './usr/bin/*' './usr/lib/nvidia-cuda-toolkit/bin/*' './usr/lib/nvidia-cuda-toolkit/libdevice/*' \
      || fail extract "$(basename "$tk_deb")"
    untar "$dev_deb" './usr/include/*' './usr/lib/x86_64-linux-gnu/libcudart_static.a' \
      './usr/lib/x86_64-linux-gnu/libcudadevrt.a' './usr/lib/x86_64-linux-gnu/libculibos.a' \
      || fail extract "$(basename "$dev_deb")"
    # The package's nvcc.profile points at /usr and /etc; this one finds everything relative to nvcc itself.
    cat >"$root.new/usr/lib/nvidia-cuda-toolkit/bin/nvcc.profile" <<'EOF'
TOP = $(_HERE_)/../../..
NVVMIR_LIBRARY_DIR = $(_HERE_)/../libdevice
PATH += $(_HERE_):$(TOP)/bin:
INCLUDES += "-I$(TOP)/include" $(_SPACE_)
LIBRARIES =+ $(_SPACE_) "-L$(TOP)/lib/x86_64-linux-gnu"
EOF
    rm -rf "$root" "$build" && mv "$root.new" "$root" || fail extract "cannot move the toolkit into $root"
    { echo "$want_stamp"; echo "verified=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; } >"$stamp_file"
    log "unpacked in $((SECONDS - t0)) s ($(du -sh "$root" | cut -f1))"
  fi
fi

nvcc=$root/usr/lib/nvidia-cuda-toolkit/bin/nvcc
bin=$root/usr/bin
version=$("$nvcc" --version 2>&1 | grep -oE 'release [0-9]+\.[0-9]+, V[0-9.]+' | sed 's/.*, V//')
[ -n "$version" ] || fail extract "$nvcc does not run"
case $version in 12.[4-9]* | 12.[1-9][0-9]* | 1[3-9].*) ;; *) fail setup "$suite ships CUDA $version; the FP8 mma needs 12.4 or newer" ;; esac
# The toolkit's g++ wrapper picks a g++ this nvcc supports (g++-13 down to g++-6).
"$root/usr/lib/nvidia-cuda-toolkit/bin/g++" --version >/dev/null 2>&1 || fail setup "no host compiler CUDA $version accepts (g++ 6 to 13): apt-get install g++"

# --- 5. Build into DIR/build and DIR/dist ---------------------------------------------------------------------------
# A build tree configured against another unpacked toolkit, or from another checkout (DIR shared by clones), starts over.
if [ -f "$build/CMakeCache.txt" ] && { ! cmp -s "$stamp_file" "$build/.fastserve-toolkit" ||
     ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$repo" "$build/CMakeCache.txt"; }; then
  rm -rf "$build"
fi
mkdir -p "$build" && cp "$stamp_file" "$build/.fastserve-toolkit"
log "building libfastserve_cuda.so with CUDA $version for $archs (log: $build/build.log)"
t0=$SECONDS
if ! env -u CUDACXX -u CUDAHOSTCXX cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$archs" -DFASTSERVE_DIST_DIR="$out" \
       >"$build/build.log" 2>&1 ||
   ! cmake --build "$build" -j"$(nproc)" >>"$build/build.log" 2>&1; then
  tail -40 "$build/build.log" >&2
  fail compile "CUDA $version build of libfastserve_cuda.so failed (log: $build/build.log)"
fi
lib=$out/libfastserve_cuda.so
[ -f "$lib" ] || { grep -E '^-- FastServe' "$build/build.log" >&2; fail compile "$lib was not produced (log: $build/build.log)"; }
grep -q 'FP8 GEMM per arch: 89-real: FP8 e4m3 mma, 90a-real: FP8 e4m3 mma' "$build/build.log" \
  || fail fp8 "CMake did not select the FP8 mma for both archs: $(grep -m1 'FP8 GEMM per arch' "$build/build.log")"
log "built in $((SECONDS - t0)) s"

# --- 6a. FP8 instructions: PTX of matmul.cu, SASS of the library ----------------------------------------------------
mma='mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32'
ptx_counts=()
for a in 89 90a; do
  "$nvcc" -ptx -std=c++17 -arch="compute_$a" -I"$repo/native/include" -o "$build/matmul.compute_$a.ptx" \
    "$repo/native/cuda/matmul.cu" >>"$build/build.log" 2>&1 || fail compile "PTX of matmul.cu for compute_$a"
  n=$(grep -c "$mma" "$build/matmul.compute_$a.ptx")
  [ "$n" -gt 0 ] || fail fp8 "no $mma in matmul.cu's PTX for compute_$a"
  ptx_counts+=("sm_$a $n")
done
sass=$build/sass
rm -rf "$sass" && mkdir -p "$sass"
(cd "$sass" && "$bin/cuobjdump" -xelf matmul "$lib" >/dev/null) || fail fp8 "cuobjdump cannot extract matmul's cubins from $lib"
# Only the FP8 kernels (the Fp8Op instances and the wgmma kernel) count: the 16-bit weight kernels in the same file use BF16/F16 mmas.
for a in 89 90a; do
  [ -f "$sass/matmul.sm_$a.cubin" ] || fail fp8 "$lib has no sm_$a code for matmul.cu"
  "$bin/cuobjdump" -sass "$sass/matmul.sm_$a.cubin" >"$sass/matmul.sm_$a.sass" || fail fp8 "cuobjdump -sass of matmul.sm_$a.cubin"
  awk '/Function :/ { keep = index($0, "Fp8Op") > 0 || index($0, "fp8_wgmma") > 0 } keep' "$sass/matmul.sm_$a.sass" >"$sass/matmul-fp8.sm_$a.sass"
  [ -s "$sass/matmul-fp8.sm_$a.sass" ] || fail fp8 "no FP8 (Fp8Op) kernel in the library's sm_$a matmul SASS"
done
qmma89=$(grep -cE 'QMMA\.16832\.F32\.E4M3\.E4M3' "$sass/matmul-fp8.sm_89.sass")
unpack90=$(grep -cE 'F2FP\.F16\.E4M3\.UNPACK_B' "$sass/matmul-fp8.sm_90a.sass")
hmma90=$(grep -E 'HMMA\.16816\.F32' "$sass/matmul-fp8.sm_90a.sass" | grep -vc 'BF16')
bf16_89=$(grep -cE 'HMMA\.[0-9]+\.F32\.BF16' "$sass/matmul-fp8.sm_89.sass")
[ "$qmma89" -gt 0 ] || fail fp8 "no QMMA.16832.F32.E4M3.E4M3 (FP8 tensor-core mma) in the library's sm_89 FP8 kernels"
[ "$bf16_89" -eq 0 ] || fail fp8 "sm_89 FP8 kernels still have $bf16_89 BF16 mmas (the portable path)"
[ "$unpack90" -gt 0 ] && [ "$hmma90" -gt 0 ] || fail fp8 "no E4M3 unpack + F16 HMMA (the FP8 mma.sync as ptxas lowers it for Hopper) in the library's sm_90a FP8 kernels"
# The Hopper prefill kernel: warpgroup MMA on FP8 tensor cores (QGMMA), only in the sm_90a code.
qgmma90=$(grep -cE 'QGMMA\.64x128x32\.F32\.E4M3\.E4M3' "$sass/matmul-fp8.sm_90a.sass")
[ "$qgmma90" -gt 0 ] || fail fp8 "no QGMMA.64x128x32.F32.E4M3.E4M3 (the FP8 wgmma kernel) in the library's sm_90a FP8 kernels"

# --- 6b. Exports ---------------------------------------------------------------------------------------------------
exports() { nm -D --defined-only "$1" | awk '{print $NF}' | sort; }
exports "$lib" >"$build/exports.txt"
ref=$repo/dist/libfastserve_cuda.so
if [ -f "$ref" ]; then
  exports "$ref" >"$build/exports.ref.txt"
  ref_name="dist/libfastserve_cuda.so"
else
  grep -oE '^FS_API [^(]*\bfs_cuda_[a-z0-9_]+\(' "$repo/native/include/fastserve_cuda.h" | grep -oE 'fs_cuda_[a-z0-9_]+' | sort >"$build/exports.ref.txt"
  ref_name="the header's FS_API list (no dist/libfastserve_cuda.so to compare with)"
fi
if ! cmp -s "$build/exports.txt" "$build/exports.ref.txt"; then
  diff "$build/exports.ref.txt" "$build/exports.txt" | grep '^[<>]' | sed 's/^</  missing:/; s/^>/  extra:  /' >&2
  fail exports "exported symbols differ from $ref_name"
fi
n_exports=$(wc -l <"$build/exports.txt")

# --- 6c. CTests in the 12.4 tree (no GPU: the smoke test loads the library and sees no device) -----------------------
ctest --test-dir "$build" --output-on-failure >"$build/ctest.log" 2>&1 || { cat "$build/ctest.log" >&2; fail tests "CTests of the CUDA $version build (log: $build/ctest.log)"; }
n_tests=$(sed -n 's/^100% tests passed, 0 tests failed out of \([0-9]*\)$/\1/p' "$build/ctest.log")
[ "${n_tests:-0}" -gt 0 ] || fail tests "no CTest ran in $build"

echo "cuda12-check: PASS: CUDA $version built $lib for $archs in $((SECONDS - start)) s$([ $offline = 1 ] && echo ' (offline, cached toolkit)');" \
  "FP8 e4m3 mma in PTX (${ptx_counts[0]}, ${ptx_counts[1]}), SASS sm_89 $qmma89 QMMA.E4M3, sm_90a $unpack90 E4M3 unpacks + $hmma90 F16 HMMA + $qgmma90 QGMMA.E4M3 (wgmma);" \
  "$n_exports exports = $ref_name; $n_tests CTests passed"
