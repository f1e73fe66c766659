#!/usr/bin/env bash
# Installs what the build needs from Debian's packages when it is missing: a JDK 17, Maven,
# Python's venv module and headers, a C compiler. Idempotent; quiet when everything is there.
set -euo pipefail
need=()
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v make >/dev/null 2>&1 || need+=(make)
# monitoring: `matchctl up --monitoring` runs prometheus; `make test` checks the alert rules with promtool
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# the compiled engine (mypyc) needs a C compiler and the headers of the Python the venv uses
command -v cc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    >/dev/null 2>&1 || need+=(python3-dev)
if ((${#need[@]})); then
    echo "installing Debian packages: ${need[*]}"
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}"
fi
