#!/usr/bin/env bash
# Make sure a working Docker engine is available on this (Debian bookworm) machine.
#
# Idempotent; safe to call before every build or test run. As root it:
#   1. installs Debian's docker.io (engine + containerd + runc) when `dockerd` is missing
#      (a bare docker CLI, e.g. /usr/local/bin/docker, is NOT enough: we check for dockerd);
#   2. installs Debian's docker-compose (v1, Python) when neither `docker compose` (v2 plugin)
#      nor `docker-compose` exists - bookworm ships no compose v2 plugin;
#   3. installs debootstrap when missing (docker/build-base.sh needs it);
#   4. starts dockerd in the background when `docker info` fails (there is no systemd on
#      these machines), logging to $MATCHX_DOCKERD_LOG, and waits - bounded - until
#      `docker info` answers.
#
# Environment:
#   MATCHX_DOCKERD_LOG      dockerd log file          (default /var/log/matchx-dockerd.log)
#   MATCHX_DOCKERD_WAIT     seconds to wait for dockerd (default 60)
#   MATCHX_DOCKERD_ARGS     extra dockerd arguments    (default: none)
#   MATCHX_SKIP_COMPOSE=1   do not install docker-compose
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
LOG=${MATCHX_DOCKERD_LOG:-/var/log/matchx-dockerd.log}
WAIT=${MATCHX_DOCKERD_WAIT:-60}
PIDFILE=/var/run/matchx-dockerd.pid

say() { printf '[ensure-docker] %s\n' "$*"; }
die() { printf '[ensure-docker] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts dockerd)"

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    # --no-install-recommends keeps it small; docker.io's hard deps (containerd, runc,
    # iptables, tini) are still pulled in.
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have() { command -v "$1" >/dev/null 2>&1; }

# True when PID is a live (not zombie) dockerd. A pid file can outlive its process, and a
# killed dockerd may linger as a zombie for a while; kill -0 alone says yes to both.
dockerd_alive() {
    local pid=$1 state
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] \
        || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] && [ "$state" != X ]
}
show_log() {  # this start's part of the log
    echo "---- $LOG (since this start) ----" >&2
    sed -n "/^=== ensure-docker: start ${START_TAG:-none}/,\$p" "$LOG" | tail -n 40 >&2 || true
}

# --- packages -------------------------------------------------------------------
need=()
if ! have dockerd; then
    say "dockerd not found (a docker CLI alone is not an engine): will install docker.io"
    need+=(docker.io)
fi
if ! have debootstrap; then
    need+=(debootstrap)
fi
if [ "${MATCHX_SKIP_COMPOSE:-0}" != 1 ] && ! docker compose version >/dev/null 2>&1 \
        && ! have docker-compose; then
    need+=(docker-compose)
fi
# dockerd needs these; normally already there or pulled in with docker.io.
for p in iptables:iptables ca-certificates:update-ca-certificates; do
    have "${p#*:}" || need+=("${p%%:*}")
done
if [ "${#need[@]}" -gt 0 ]; then
    t0=$(date +%s)
    apt_install "${need[@]}"
    say "installed ${need[*]} in $(( $(date +%s) - t0 ))s"
else
    say "packages present (dockerd, debootstrap, compose)"
fi

# --- engine ---------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    say "docker engine already running ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
    exit 0
fi

if [ -s "$PIDFILE" ] && dockerd_alive "$(cat "$PIDFILE")"; then
    say "dockerd (pid $(cat "$PIDFILE")) is running but not answering yet; waiting"
else
    # Pick an iptables backend that actually works in this kernel: Debian defaults to
    # iptables-nft; fall back to legacy; if neither works run dockerd without iptables
    # (user-defined bridge networks still work container-to-container, but no NAT).
    ipt_args=()
    if ! iptables -t nat -L -n >/dev/null 2>&1; then
        if have iptables-legacy && iptables-legacy -t nat -L -n >/dev/null 2>&1; then
            say "iptables-nft not usable here; switching alternatives to iptables-legacy"
            update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
            update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null || true
        else
            say "WARNING: no working iptables; starting dockerd with --iptables=false"
            ipt_args=(--iptables=false --ip-masq=false)
        fi
    fi
    # No systemd here: cgroupfs driver. Storage: dockerd picks overlay2 on ext4/xfs (measured
    # here) and falls back by itself elsewhere; MATCHX_DOCKERD_ARGS can force one.
    mkdir -p "$(dirname "$LOG")"
    START_TAG="$(date +%s)-$$"
    echo "=== ensure-docker: start $START_TAG $(date -Is)" >>"$LOG"
    say "starting dockerd (log: $LOG)"
    # setsid: own session, so the engine survives the shell that called us.
    # shellcheck disable=SC2086
    setsid dockerd --exec-opt native.cgroupdriver=cgroupfs "${ipt_args[@]}" \
        ${MATCHX_DOCKERD_ARGS:-} >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    say "dockerd pid $(cat "$PIDFILE")"
fi

deadline=$(( $(date +%s) + WAIT ))
until docker info >/dev/null 2>&1; do
    if ! dockerd_alive "$(cat "$PIDFILE")"; then
        show_log
        die "dockerd exited during start-up (see $LOG)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        show_log
        die "dockerd did not answer 'docker info' within ${WAIT}s (see $LOG)"
    fi
    sleep 1
done
say "docker engine up: server $(docker version -f '{{.Server.Version}}'), storage driver $(docker info -f '{{.Driver}}'), cgroup $(docker info -f '{{.CgroupVersion}}')"
