#!/usr/bin/env bash
# Run Docker Compose on docker/compose.yaml with the project name "matchx".
#   docker/compose.sh up -d | ps | logs -f member-0 | down -v | ...
# Uses the `docker compose` v2 plugin when the docker CLI has it, else Debian's
# `docker-compose` (v1.29; bookworm ships no v2 plugin; docker/ensure-docker.sh installs it).
# Environment:
#   MATCHX_COMPOSE_PROJECT  project name      (default matchx)
#   MATCHX_COMPOSE_FILES    compose files, colon-separated (default docker/compose.yaml);
#                           e.g. "docker/compose.yaml:/tmp/override.yaml"
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
files=()
IFS=: read -r -a list <<<"${MATCHX_COMPOSE_FILES:-$HERE/compose.yaml}"
for f in "${list[@]}"; do files+=(-f "$f"); done
if docker compose version >/dev/null 2>&1; then
    exec docker compose -p "${MATCHX_COMPOSE_PROJECT:-matchx}" "${files[@]}" "$@"
elif command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose -p "${MATCHX_COMPOSE_PROJECT:-matchx}" "${files[@]}" "$@"
else
    echo "compose.sh: neither 'docker compose' nor 'docker-compose' found; run docker/ensure-docker.sh" >&2
    exit 1
fi
