# Verified fetch of Debian packages for tools the project runs without installing them (native/cuda12-check.sh:
# trixie's CUDA 12.4; native/vulkan/glslc-coopmat.sh: trixie's glslc). Sourced, not run: the caller picks the packages
# and unpacks them; this does the rest, the one copy of it.
#
# Everything downloaded is treated as hostile: InRelease's signature is checked with gpgv against Debian's archive
# keyring (bookworm's debian-archive-keyring has the trixie keys), then its Codename and Valid-Until (past it, a
# verified set already unpacked is reused, as without network; nothing new is trusted); the package index
# (Packages.xz) against the SHA256 in the signed part of InRelease, each .deb against the SHA256 and size in that index.
# Only then is anything unpacked. The verified set is unpacked once into ROOT and stamped; a later run whose index
# names the same set reuses it, and a run that cannot reach the mirror reuses whatever verified set ROOT holds.
#
#   FASTSERVE_DEBIAN_MIRROR        default http://deb.debian.org/debian
#   FASTSERVE_DEBIAN_KEYRING       default /usr/share/keyrings/debian-archive-keyring.gpg
#   FASTSERVE_DEBIAN_UNSIGNED=1    go on when the signature cannot be checked (no gpgv or keyring) or no key in the
#                                  keyring verifies it; the SHA256 chain then only proves that the packages match an
#                                  unauthenticated index. Without it that is a failure: falling back on its own would
#                                  let a server that strips or replaces the signature skip the check.
#
# The caller sets deb_name before sourcing: its log lines are "[deb_name] ..." on stderr, its result line
# "deb_name: FAIL (WHAT): ..." on stdout, with WHAT's exit code from deb_codes (setup 1, network 2, download 3,
# checksum 4, signature 5, extract 6; the caller adds its own kinds from 7 up). Then:
#   deb_require TOOL...                    fail (setup) unless each is on PATH
#   deb_init DIR SUITES INDEX_PATH         e.g. trixie main/binary-amd64/Packages.xz; DIR (made absolute: deb_dir)
#                                          holds meta/ (InRelease, index) and debs/ (the verified .debs), one run a DIR.
#                                          SUITES: one, or several separated by spaces ("trixie-backports trixie"),
#                                          each verified on its own (meta/SUITE/), whose indexes deb_pick then reads as
#                                          one: the newest version of a package in any of them wins; fails (setup)
#                                          unless the host is of INDEX_PATH's architecture (binary-ARCH)
#   deb_fetch ROOT LAYOUT PICK UNPACK      PICK, a function of the caller, chooses the packages with deb_pick, deb_want
#                                          and deb_closure; UNPACK STAGE unpacks them (deb_untar, deb_file) into STAGE,
#                                          which then replaces ROOT. LAYOUT: bump it when what UNPACK does changes, so
#                                          a cached ROOT is unpacked again. Sets deb_offline=1 when ROOT was reused
#                                          without the mirror or past an index's Valid-Until, deb_stamp (ROOT's stamp
#                                          file: the set, when verified).

log() { printf '[%s] %s\n' "$deb_name" "$*" >&2; }
declare -gA deb_codes=([setup]=1 [network]=2 [download]=3 [checksum]=4 [signature]=5 [extract]=6)
fail() {
  local what=$1
  shift
  echo "$deb_name: FAIL ($what): $*"
  exit "${deb_codes[$what]:-1}"
}

deb_mirror=${FASTSERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
deb_keyring=${FASTSERVE_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
deb_unsigned=${FASTSERVE_DEBIAN_UNSIGNED:-0}
declare -gA deb_file

deb_require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || fail setup "$tool is not installed"
  done
}

deb_init() {
  deb_require curl xz dpkg dpkg-deb tar sha256sum awk
  mkdir -p "$1" || fail setup "cannot create $1"
  deb_dir=$(cd "$1" && pwd)
  read -r -a deb_suites <<<"$2"
  [ ${#deb_suites[@]} -gt 0 ] || fail setup "deb_init: no suite"
  deb_suite=${deb_suites[0]} deb_index_path=$3
  # Packages of one architecture run only on a host of it.
  local arch host
  arch=$(sed -n 's|.*/binary-\([a-z0-9]*\)/.*|\1|p' <<<"$3")
  host=$(dpkg --print-architecture 2>/dev/null || uname -m)
  [ -z "$arch" ] || [ "$arch" = "$host" ] || fail setup "only $arch hosts are supported (this is $host)"
  deb_meta=$deb_dir/meta deb_debs=$deb_dir/debs
  mkdir -p "$deb_meta" "$deb_debs" || fail setup "cannot create $deb_meta and $deb_debs"
  # One run at a time per DIR. The descriptor stays open until the caller exits.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$deb_dir/.lock"
    flock -n 9 || { log "waiting for another run using $deb_dir"; flock 9; }
  fi
}

# deb_get URL FILE [MAX_BYTES]: FILE only appears complete; returns 2 when the network failed, 3 when the server did.
deb_get() {
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
deb_mb() { if [ "$1" -lt 1048576 ]; then echo "$(($1 / 1024)) kB"; else echo "$(($1 / 1048576)) MB"; fi; }
deb_sha256() { sha256sum "$1" | awk '{print $1}'; }
deb_size() { stat -c %s "$1"; }
# deb_matches FILE SIZE SHA256
deb_matches() { [ -f "$1" ] && [ "$(deb_size "$1")" = "$2" ] && [ "$(deb_sha256 "$1")" = "$3" ]; }

# The signed part of InRelease into deb_release (the file), or fail.
deb_verify_release() {
  local in=$deb_meta/InRelease status=$deb_meta/gpgv.status good bad
  deb_release=$deb_meta/InRelease.signed
  rm -f "$deb_release"
  if command -v gpgv >/dev/null 2>&1 && [ -r "$deb_keyring" ]; then
    gpgv --keyring "$deb_keyring" --status-fd 3 --output "$deb_release" "$in" 3>"$status" 2>"$deb_meta/gpgv.log"
    good=$(grep -c '^\[GNUPG:\] GOODSIG ' "$status")
    bad=$(grep -c '^\[GNUPG:\] BADSIG ' "$status")
    if [ "$bad" -gt 0 ]; then
      fail signature "InRelease has a bad signature ($(grep '^\[GNUPG:\] BADSIG ' "$status" | head -1 | cut -d' ' -f3-))"
    elif [ "$good" -gt 0 ] && [ -s "$deb_release" ]; then
      log "InRelease: $good good signature(s): $(grep '^\[GNUPG:\] GOODSIG ' "$status" | cut -d' ' -f4- | sed 's/ <.*//' | paste -sd';' | sed 's/;/; /g')"
    elif [ "$deb_unsigned" = 1 ]; then
      log "WARNING: no key in $deb_keyring verifies InRelease; FASTSERVE_DEBIAN_UNSIGNED=1, so relying on the SHA256 chain of an unauthenticated index"
      deb_release=""
    else
      fail signature "no key in $deb_keyring verifies $deb_mirror/dists/$deb_suite/InRelease ($(grep -oE '(NO_PUBKEY|EXPKEYSIG|REVKEYSIG|ERRSIG) [0-9A-F]+' "$status" | paste -sd, -)); update debian-archive-keyring, or FASTSERVE_DEBIAN_UNSIGNED=1"
    fi
  elif [ "$deb_unsigned" = 1 ]; then
    log "WARNING: signature NOT checked (no gpgv or no $deb_keyring); FASTSERVE_DEBIAN_UNSIGNED=1, so relying on the SHA256 chain of an unauthenticated index"
    deb_release=""
  else
    fail signature "cannot check InRelease's signature: no gpgv or no $deb_keyring (apt-get install gpgv debian-archive-keyring, or FASTSERVE_DEBIAN_UNSIGNED=1)"
  fi
  if [ -z "$deb_release" ]; then
    # The cleartext part of the signed message, dash-escaping undone.
    deb_release=$deb_meta/InRelease.unverified
    awk '/^-----BEGIN PGP SIGNED MESSAGE-----/ {hdr=1; next} hdr && /^$/ {hdr=0; body=1; next} hdr {next}
         /^-----BEGIN PGP SIGNATURE-----/ {exit} body {sub(/^- /, ""); print}' "$in" >"$deb_release"
  fi
  local codename valid_until
  codename=$(sed -n 's/^Codename: //p' "$deb_release" | head -1)
  [ "$codename" = "$deb_suite" ] || fail signature "InRelease is for '$codename', not $deb_suite"
  valid_until=$(sed -n 's/^Valid-Until: //p' "$deb_release" | head -1)
  if [ -n "$valid_until" ] && [ "$(date -d "$valid_until" +%s 2>/dev/null || echo 0)" -lt "$(date +%s)" ]; then
    # An expired index may be a replay of an old one: nothing in it is trusted. What was verified before still is.
    [ -f "$deb_stamp" ] || fail signature "$deb_suite's InRelease expired ($valid_until) and no verified set is cached in $deb_dir"
    deb_expired="$deb_suite's InRelease expired ($valid_until)"
  fi
}

# The package index InRelease names, verified, as deb_table: one line per package version,
# "Package Version Filename Size SHA256 Deps" (Deps: Pre-Depends and Depends, without spaces).
deb_load_index() {
  local sha size url by_hash_url plain_url rc xz=$deb_meta/Packages.xz
  read -r sha size < <(awk -v p="$deb_index_path" '/^[^ ]/ {in_sha = ($1 == "SHA256:")} in_sha && $3 == p {print $1, $2; exit}' "$deb_release")
  [[ "${sha:-}" =~ ^[0-9a-f]{64}$ && "${size:-}" =~ ^[0-9]+$ ]] || fail checksum "InRelease lists no SHA256 for $deb_index_path"
  deb_table=$deb_meta/packages.$sha
  [ -s "$deb_table" ] && return 0
  if deb_matches "$xz" "$size" "$sha"; then
    log "$deb_index_path: cached"
  else
    # By hash where the archive offers it: no race with a mirror update between InRelease and the index.
    by_hash_url="$deb_mirror/dists/$deb_suite/${deb_index_path%/*}/by-hash/SHA256/$sha"
    plain_url="$deb_mirror/dists/$deb_suite/$deb_index_path"
    url=$plain_url
    grep -q '^Acquire-By-Hash: yes' "$deb_release" && url=$by_hash_url
    log "fetching $deb_index_path ($size bytes)"
    deb_get "$url" "$xz" "$size"
    rc=$?
    if [ $rc -eq 3 ] && [ "$url" != "$plain_url" ]; then deb_get "$plain_url" "$xz" "$size"; rc=$?; fi
    [ $rc -eq 2 ] && fail network "lost $deb_mirror while fetching $deb_index_path"
    [ $rc -ne 0 ] && fail download "$deb_index_path"
    deb_matches "$xz" "$size" "$sha" || { rm -f "$xz"; fail checksum "$deb_index_path does not match InRelease's SHA256"; }
  fi
  rm -f "$deb_meta"/packages.*
  xz -dc "$xz" | awk 'BEGIN {RS = ""; FS = "\n"}
    { pkg = ver = fn = size = sha = dep = ""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^Package: /) pkg = substr($i, 10)
        else if ($i ~ /^Version: /) ver = substr($i, 10)
        else if ($i ~ /^Filename: /) fn = substr($i, 11)
        else if ($i ~ /^Size: /) size = substr($i, 7)
        else if ($i ~ /^SHA256: /) sha = substr($i, 9)
        else if ($i ~ /^(Pre-)?Depends: /) { d = substr($i, index($i, ":") + 2); gsub(/ /, "", d); dep = dep (dep == "" ? "" : ",") d }
      }
      print pkg, ver, fn, size, sha, dep }' >"$deb_table.part"
  local st=("${PIPESTATUS[@]}")
  [ "${st[0]}" = 0 ] && [ "${st[1]}" = 0 ] || { rm -f "$deb_table.part"; fail checksum "$deb_index_path does not decompress"; }
  mv "$deb_table.part" "$deb_table"
}

# deb_pick PACKAGE [VERSION]: that version's index line, or the newest's; empty when the index has none.
deb_pick() {
  local best="" line ver
  while read -r line; do
    ver=$(cut -d' ' -f2 <<<"$line")
    if [ -n "${2:-}" ]; then
      [ "$ver" = "$2" ] && best=$line
    elif [ -z "$best" ] || dpkg --compare-versions "$ver" gt "$(cut -d' ' -f2 <<<"$best")"; then
      best=$line
    fi
  done < <(awk -v want="$1" '$1 == want' "$deb_table")
  echo "$best"
}

# deb_want LINE: queue a deb_pick line for download; deb_file[PACKAGE] is where its verified .deb will be. Hostile
# index: a pool path without "..", a plain SHA256 and size.
deb_want() {
  local pkg ver fn size sha
  read -r pkg ver fn size sha _ <<<"$1"
  [[ "$fn" =~ ^pool/[A-Za-z0-9._+~/-]+\.deb$ && "$fn" != *..* && "$sha" =~ ^[0-9a-f]{64}$ && "$size" =~ ^[0-9]+$ ]] \
    || fail checksum "implausible entry in $deb_index_path: $pkg $fn $size $sha"
  deb_wanted+=("$(basename "$fn") $sha $size $fn")
  deb_file[$pkg]=$deb_debs/$(basename "$fn")
}

# deb_closure PACKAGE...: want the newest version of each and of everything it (pre-)depends on, transitively. Of
# alternatives the first is taken; version constraints are not checked (within one suite's index the newest satisfies
# them), so the caller checks that what it unpacked runs.
deb_closure() {
  local todo=("$@") seen=" " pkg line dep
  while [ ${#todo[@]} -gt 0 ]; do
    pkg=${todo[0]}
    todo=("${todo[@]:1}")
    [[ "$seen" == *" $pkg "* ]] && continue
    seen+="$pkg "
    line=$(deb_pick "$pkg")
    [ -n "$line" ] || fail download "no package $pkg in $deb_suite's $deb_index_path (wanted: $*)"
    deb_want "$line"
    for dep in $(cut -d' ' -f6 <<<"$line" | tr ',' ' '); do
      dep=${dep%%|*} dep=${dep%%(*} dep=${dep%%:*}
      todo+=("$dep")
    done
  done
}

# deb_untar DEB DEST [TAR ARGUMENT...]: the package's files (those matching the patterns given, each of which must
# match something; all without one) into DEST, owned by whoever runs this.
deb_untar() {
  local deb=$1 dest=$2
  shift 2
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" --no-same-owner --wildcards "$@"
  local st=("${PIPESTATUS[@]}")
  [ "${st[0]}" = 0 ] && [ "${st[1]}" = 0 ]
}

deb_fetch() {
  local root=$1 layout=$2 pick=$3 unpack=$4 rc entry name sha size fn t0 f want_stamp tables=() meta=$deb_meta
  deb_stamp=$root/.fastserve-toolkit deb_offline=0 deb_expired="" deb_wanted=() deb_file=()

  # --- Each suite's InRelease: signature, then the package index it names ------------------------------------------
  for deb_suite in "${deb_suites[@]}"; do
    [ ${#deb_suites[@]} -gt 1 ] && deb_meta=$meta/$deb_suite
    mkdir -p "$deb_meta" || fail setup "cannot create $deb_meta"
    log "fetching $deb_mirror/dists/$deb_suite/InRelease"
    deb_get "$deb_mirror/dists/$deb_suite/InRelease" "$deb_meta/InRelease" 4194304
    rc=$?
    if [ $rc -ne 0 ]; then
      if [ $rc -eq 2 ] && [ -f "$deb_stamp" ]; then
        deb_offline=1
        log "no network ($deb_mirror unreachable): reusing the toolkit verified on $(sed -n 's/^verified=//p' "$deb_stamp")"
        return 0
      elif [ $rc -eq 2 ]; then
        fail network "cannot reach $deb_mirror (no network?) and no toolkit is cached in $deb_dir"
      else
        fail download "$deb_mirror/dists/$deb_suite/InRelease"
      fi
    fi
    deb_verify_release
    if [ -n "$deb_expired" ]; then
      deb_offline=1
      log "$deb_expired: reusing the toolkit verified on $(sed -n 's/^verified=//p' "$deb_stamp")"
      return 0
    fi
    deb_load_index
    tables+=("$deb_table")
  done
  if [ ${#tables[@]} -gt 1 ]; then
    deb_table=$meta/packages.all deb_suite="${deb_suites[*]}"
    cat "${tables[@]}" >"$deb_table" || fail setup "cannot write $deb_table"
  fi

  # --- Which packages: the caller's choice ------------------------------------------------------------------------------
  "$pick"
  [ ${#deb_wanted[@]} -gt 0 ] || fail setup "$pick wants no package"
  want_stamp=$(printf 'layout=%s\n' "$layout"; printf '%s\n' "${deb_wanted[@]}" | awk '{print $1, $2}')
  log "packages: $(for entry in "${deb_wanted[@]}"; do read -r name _ size _ <<<"$entry"; printf '%s (%s), ' "$name" "$(deb_mb "$size")"; done | sed 's/, $//')"

  # --- Download (or reuse) and unpack, unless this exact set is already unpacked ------------------------------------
  if [ -f "$deb_stamp" ] && [ "$(grep -v '^verified=' "$deb_stamp")" = "$want_stamp" ]; then
    log "toolkit already unpacked in $root"
    return 0
  fi
  for entry in "${deb_wanted[@]}"; do
    read -r name sha size fn _ <<<"$entry"
    if deb_matches "$deb_debs/$name" "$size" "$sha"; then
      log "$name: cached"
      continue
    fi
    log "downloading $name ($(deb_mb "$size"))"
    t0=$SECONDS
    deb_get "$deb_mirror/$fn" "$deb_debs/$name" "$size"
    rc=$?
    [ $rc -eq 2 ] && fail network "lost $deb_mirror while fetching $name"
    [ $rc -ne 0 ] && fail download "$deb_mirror/$fn"
    deb_matches "$deb_debs/$name" "$size" "$sha" || { rm -f "$deb_debs/$name"; fail checksum "$name does not match the SHA256 in $deb_index_path"; }
    log "$name: $((SECONDS - t0)) s, SHA256 ok"
  done
  # Older versions' packages are of no further use.
  for f in "$deb_debs"/*.deb; do
    [ -e "$f" ] || continue
    printf '%s\n' "${deb_wanted[@]}" | awk '{print $1}' | grep -qxF "$(basename "$f")" || rm -f "$f"
  done

  t0=$SECONDS
  rm -rf "$root.new" && mkdir -p "$root.new" || fail extract "cannot create $root.new"
  "$unpack" "$root.new"
  rm -rf "$root" && mv "$root.new" "$root" || fail extract "cannot move the toolkit into $root"
  { echo "$want_stamp"; echo "verified=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; } >"$deb_stamp"
  log "unpacked in $((SECONDS - t0)) s ($(du -sh "$root" | cut -f1))"
}
