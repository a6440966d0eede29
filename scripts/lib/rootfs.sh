# shellcheck shell=bash
# Shared by scripts/build-rootfs (bookworm with systemd, for the system tests) and
# scripts/build-rootfs-docker (trixie's Docker 26 with the containerd image store): builds, or
# reuses, a debootstrapped Debian rootfs in a cache dir and prints its path. Source it after
# setting, in the calling script:
#
#   SUITE                 the Debian suite (bookworm, trixie)
#   PACKAGES              array, debootstrap --include (variant minbase)
#   customize_rootfs DIR  a function: finishes the rootfs in DIR after debootstrap
#   rootfs_key_extra      optional function: prints more text the key hashes (e.g. apt sources)
#
# then call `build_rootfs "$@"` ([CACHE_DIR]; default $FORKLIFT_BOOT_ROOTFS_CACHE or
# /var/cache/forklift-boot/rootfs).
#
# The rootfs is CACHE_DIR/<key>, where <key> hashes the calling script, this file, the suite, the
# architecture, the mirror and rootfs_key_extra's output: change any of them and the next run
# builds a new one. It is built in CACHE_DIR/.build-<key>-XXXX and renamed into place only when
# complete, so a half-built rootfs is never reused; builds (of every kind) are serialised with
# flock on CACHE_DIR/.lock, and leftovers of an interrupted build are removed by the next one.
# Downloaded .debs are kept in CACHE_DIR/.debs for every suite (a warm build skips downloads).
# Treat the result as read-only.

HOST_SOURCES=/etc/apt/sources.list.d/debian.sources
ROOTFS_LIB=$(readlink -f "${BASH_SOURCE[0]}")
ROOTFS_SCRIPT=$(readlink -f "$0")
ROOTFS_NAME=$(basename "$ROOTFS_SCRIPT")

log() { echo "$ROOTFS_NAME: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Mounts under a dir, deepest first (debootstrap mounts proc and sys in the target).
mounts_under() {
  awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r
}
remove_tree() {
  local m
  for m in $(mounts_under "$1"); do umount -l "$m" || true; done
  rm -rf --one-file-system "$1"
}

build_rootfs() {
  local cache_dir=${1:-${FORKLIFT_BOOT_ROOTFS_CACHE:-/var/cache/forklift-boot/rootfs}}

  [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"
  command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"

  # The mirror apt already uses (the first deb822 URIs: line; docs/testbed.md), unless overridden.
  MIRROR=${FORKLIFT_BOOT_MIRROR:-}
  if [ -z "$MIRROR" ] && [ -f "$HOST_SOURCES" ]; then
    MIRROR=$(awk '/^URIs:/ { print $2; exit }' "$HOST_SOURCES")
  fi
  [ -n "$MIRROR" ] || die "no Debian mirror: no URIs: line in $HOST_SOURCES (set FORKLIFT_BOOT_MIRROR)"

  local arch key dest
  arch=$(dpkg --print-architecture)
  key=$( {
    cat "$ROOTFS_SCRIPT" "$ROOTFS_LIB"
    printf '%s\n' "$SUITE" "$arch" "$MIRROR"
    if declare -F rootfs_key_extra >/dev/null; then rootfs_key_extra; fi
  } | sha256sum | cut -c1-16)
  dest=$cache_dir/$key

  if [ -d "$dest" ]; then
    echo "$dest"
    return 0
  fi

  mkdir -p "$cache_dir"
  exec 9>"$cache_dir/.lock"
  log "waiting for the build lock $cache_dir/.lock"
  flock -w 1800 9 || die "another build holds $cache_dir/.lock for more than 30 min"
  if [ -d "$dest" ]; then # built by whoever held the lock
    echo "$dest"
    return 0
  fi

  # Leftovers of interrupted builds (we hold the lock, so nobody is using them).
  local old
  for old in "$cache_dir"/.build-*; do
    [ -e "$old" ] || continue
    log "removing an interrupted build: $old"
    remove_tree "$old"
  done

  ROOTFS_TMP=$(mktemp -d "$cache_dir/.build-$key-XXXX")
  trap 'remove_tree "$ROOTFS_TMP"; rm -f "$ROOTFS_TMP.log"' EXIT
  chmod 755 "$ROOTFS_TMP"
  local start=$SECONDS

  log "debootstrap $SUITE from $MIRROR into $ROOTFS_TMP"
  mkdir -p "$cache_dir/.debs"
  debootstrap --variant=minbase --cache-dir="$cache_dir/.debs" \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    "$SUITE" "$ROOTFS_TMP" "$MIRROR" >"$ROOTFS_TMP.log" 2>&1 ||
    { tail -n 30 "$ROOTFS_TMP.log" >&2; die "debootstrap failed"; }
  rm -f "$ROOTFS_TMP.log"

  customize_rootfs "$ROOTFS_TMP"

  [ -z "$(mounts_under "$ROOTFS_TMP")" ] || die "still mounted under $ROOTFS_TMP: $(mounts_under "$ROOTFS_TMP")"
  sync -f "$ROOTFS_TMP" # durable before it becomes visible
  mv -T "$ROOTFS_TMP" "$dest"
  trap - EXIT
  log "built $dest in $((SECONDS - start)) s ($(du -sh "$dest" | cut -f1))"
  echo "$dest"
}
