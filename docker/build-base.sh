#!/usr/bin/env bash
# Build the base image matchx/base:bookworm WITHOUT pulling from any container registry.
#
#   debootstrap --variant=minbase bookworm  (from the Debian mirror the host is configured for)
#   + apt-get install (in a chroot) the packages in BASE_PACKAGES below
#   + clean apt caches, docs, logs
#   tar -C rootfs -c . | docker import - matchx/base:bookworm
#
# Skipped entirely when matchx/base:bookworm exists and carries the label
# org.matchx.base.inputs=<hash of the inputs below>; change BASE_PACKAGES (or bump
# BASE_RECIPE) and the next run rebuilds. MATCHX_FORCE_BASE=1 forces a rebuild.
#
# Downloaded .debs are kept under docker/.build/ (gitignored), so a rebuild downloads
# (almost) nothing:  docker/.build/debootstrap-cache  (debootstrap --cache-dir)
#                    docker/.build/apt-archives       (the chroot's /var/cache/apt/archives)
#
# Environment:
#   MATCHX_BASE_IMAGE       image name            (default matchx/base:bookworm)
#   MATCHX_DEBIAN_MIRROR    main archive URI      (default: from the host's apt sources,
#                                                  else http://deb.debian.org/debian)
#   MATCHX_DEBIAN_SECURITY  security archive URI  (default: from the host's apt sources,
#                                                  else http://deb.debian.org/debian-security)
#   MATCHX_FORCE_BASE=1     rebuild even when the image is up to date
#   MATCHX_KEEP_ROOTFS=1    keep docker/.build/rootfs after the import (for debugging)
#
# Needs root, debootstrap and a running docker engine (docker/ensure-docker.sh).
set -euo pipefail

# ---- inputs: anything here changes the image hash ------------------------------------
SUITE=bookworm
VARIANT=minbase
BASE_PACKAGES=(
    openjdk-17-jre-headless   # Aeron Cluster (java-cluster shaded jar), JVM for JPype
    python3                   # 3.11 on bookworm
    python3-venv
    ca-certificates
    iproute2                  # ip/tc/ss: network fault injection and debugging in tests
    procps                    # ps/pkill inside containers, /proc helpers
    tini                      # tiny init as PID 1: reaps zombies, forwards signals
)
BASE_RECIPE=1   # bump when the build/cleanup steps below change in a way that matters
# ---------------------------------------------------------------------------------------

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=$HERE/.build
ROOTFS=$BUILD/rootfs
IMAGE=${MATCHX_BASE_IMAGE:-matchx/base:bookworm}
LABEL=org.matchx.base.inputs

say() { printf '[build-base %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[build-base] ERROR: %s\n' "$*" >&2; exit 1; }
T_START=$(date +%s)
phase_t=$T_START
phase() {  # print the time the previous phase took, then announce the next one
    local now; now=$(date +%s)
    [ -n "${PHASE:-}" ] && say "   ... $PHASE took $(( now - phase_t ))s"
    PHASE=$1; phase_t=$now
    [ "$1" = done ] || say "$1"
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mounts)"
command -v debootstrap >/dev/null || die "debootstrap missing: run docker/ensure-docker.sh"
docker info >/dev/null 2>&1 || die "no docker engine: run docker/ensure-docker.sh"

INPUT_HASH=$(printf '%s\n' "suite=$SUITE" "variant=$VARIANT" "recipe=$BASE_RECIPE" \
    "arch=$(dpkg --print-architecture)" "${BASE_PACKAGES[@]}" | sha256sum | cut -c1-16)

current=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true)
if [ "$current" = "$INPUT_HASH" ] && [ "${MATCHX_FORCE_BASE:-0}" != 1 ]; then
    say "$IMAGE is up to date (inputs $INPUT_HASH); nothing to do"
    exit 0
fi
say "building $IMAGE (inputs $INPUT_HASH; existing: ${current:-none})"

mkdir -p "$BUILD/debootstrap-cache" "$BUILD/apt-archives/partial"
exec 9>"$BUILD/base.lock"
flock -w 1800 9 || die "another build-base.sh holds $BUILD/base.lock"

# ---- mirrors: the ones this host's apt uses --------------------------------------------
host_uris() {  # all URIs from the host's apt sources (deb822 and one-line formats)
    { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p'
      cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p'
    } | tr ' ' '\n' | grep -E '^(https?|file):' || true
}
MIRROR=${MATCHX_DEBIAN_MIRROR:-$(host_uris | grep -v -- '-security' | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${MATCHX_DEBIAN_SECURITY:-$(host_uris | grep -- '-security' | head -n1)}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
say "mirror $MIRROR, security $SECURITY"

# ---- mounts inside the rootfs, always undone -------------------------------------------
MOUNTS=()
cleanup_mounts() {
    local i
    for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
        umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
trap cleanup_mounts EXIT
trap 'cleanup_mounts; exit 130' INT TERM
do_mount() { mount "$@"; MOUNTS+=("${!#}"); }

safe_rm_rootfs() {
    [ -e "$ROOTFS" ] || return 0
    if findmnt -rn -o TARGET | grep -q "^$ROOTFS\(/\|$\)"; then
        die "something is still mounted under $ROOTFS; refusing to delete it"
    fi
    rm -rf --one-file-system "$ROOTFS"
}

# ---- 1. debootstrap ---------------------------------------------------------------------
phase "debootstrap --variant=$VARIANT $SUITE (cache: docker/.build/debootstrap-cache)"
safe_rm_rootfs
debootstrap --variant="$VARIANT" --cache-dir="$BUILD/debootstrap-cache" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$BUILD/debootstrap.log" 2>&1 \
    || { tail -n 30 "$BUILD/debootstrap.log" >&2; die "debootstrap failed (docker/.build/debootstrap.log)"; }

# ---- 2. packages, in a chroot -----------------------------------------------------------
phase "apt-get install ${BASE_PACKAGES[*]}"
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
rm -f "$ROOTFS/etc/apt/sources.list"
# No services may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"; chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
# Like Debian's official images: no docs/man pages/locales from here on, no recommends.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/matchx-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/90matchx" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
EOF
# openjdk's postinst expects this directory (it is absent in minbase).
mkdir -p "$ROOTFS/usr/share/man/man1"
do_mount -t proc proc "$ROOTFS/proc"
do_mount -t sysfs sysfs "$ROOTFS/sys"
mkdir -p "$ROOTFS/dev/pts"
do_mount -t devpts -o newinstance,ptmxmode=0666 devpts "$ROOTFS/dev/pts"
do_mount --bind "$BUILD/apt-archives" "$ROOTFS/var/cache/apt/archives"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
in_root() { chroot "$ROOTFS" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
{
    in_root apt-get update
    in_root apt-get -y dist-upgrade
    in_root apt-get install -y "${BASE_PACKAGES[@]}"
} >"$BUILD/apt.log" 2>&1 || { tail -n 40 "$BUILD/apt.log" >&2; die "apt in chroot failed (docker/.build/apt.log)"; }
in_root java -version 2>&1 | sed 's/^/    /'
in_root python3 --version | sed 's/^/    /'
JAVA_HOME=$(in_root sh -c 'dirname "$(dirname "$(readlink -f "$(command -v java)")")"')
cleanup_mounts

# ---- 3. clean ---------------------------------------------------------------------------
phase "clean"
rm -f "$ROOTFS/usr/sbin/policy-rc.d"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
       "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
find "$ROOTFS" -xdev -name '__pycache__' -type d -prune -exec rm -rf {} +
# The archives dir was a bind mount: leave an empty, normal one behind.
mkdir -p "$ROOTFS/var/cache/apt/archives/partial"
: >"$ROOTFS/etc/resolv.conf"   # docker provides its own
echo "matchx-base" >"$ROOTFS/etc/hostname"
say "    rootfs size: $(du -sh --one-file-system "$ROOTFS" | cut -f1)"

# ---- 4. import ----------------------------------------------------------------------------
phase "docker import -> $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change "LABEL $LABEL=$INPUT_HASH" \
    --change "LABEL org.opencontainers.image.title=matchx-base" \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE $VARIANT + ${BASE_PACKAGES[*]}\"" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV JAVA_HOME=$JAVA_HOME" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
docker tag "$IMAGE" "${IMAGE%%:*}:$SUITE-$INPUT_HASH"
# Older builds' hash tags would keep their (now unused) layers alive.
for old in $(docker image ls --format '{{.Repository}}:{{.Tag}}' "${IMAGE%%:*}" | grep ":$SUITE-" | grep -v ":$SUITE-$INPUT_HASH\$"); do
    docker rmi "$old" >/dev/null 2>&1 || true
done
if [ "${MATCHX_KEEP_ROOTFS:-0}" != 1 ]; then safe_rm_rootfs; fi

phase done
say "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')) in $(( $(date +%s) - T_START ))s"
