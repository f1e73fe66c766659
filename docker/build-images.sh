#!/usr/bin/env bash
# Build the matchx image (default matchx/matchx:latest) from this repo. One call does it all:
#
#   1. docker/ensure-docker.sh       engine up (installs docker.io/debootstrap if missing)
#   2. docker/build-base.sh          matchx/base:bookworm (skipped when up to date)
#   3. wheelhouse                    the runtime dependencies of pyproject.toml as wheels,
#                                    downloaded ON THE HOST with pip (cached per dependency
#                                    set under docker/.build/wheels/<hash>/), so the image
#                                    build needs no network and no extra CA certificates
#   4. context                       docker/.build/context: Dockerfile, requirements.txt,
#                                    wheels/, pyproject.toml, README.md, pyengine/,
#                                    coordinator/, lib/matchx-cluster.jar  - nothing else
#   5. docker build                  there; unchanged layers are reused
#   6. smoke test                    java -version, import jpype/nacl, matchctl --help, and
#                                    (with a jar) JVM start via JPype + an Aeron class lookup
#
# The shaded jar must be built first (mvn -q -DskipTests package); it is taken from
# $MATCHX_JAR, else java-cluster/target/matchx-cluster.jar, else
# java-cluster/target/*-shaded.jar.
#
# Usage: docker/build-images.sh [--allow-missing-jar] [--no-smoke]
#   --allow-missing-jar  build even without a jar (image then cannot run a member; for
#                        trying out the image build before the Java module exists)
#   --no-smoke           skip step 6
# Environment:
#   MATCHX_IMAGE         image to build           (default matchx/matchx:latest)
#   MATCHX_BASE_IMAGE    base image               (default matchx/base:bookworm)
#   MATCHX_JAR           path of the shaded jar
#   MATCHX_SKIP_ENSURE=1 skip steps 1-2 (engine and base image known to be there)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD=$HERE/.build
CTX=$BUILD/context
IMAGE=${MATCHX_IMAGE:-matchx/matchx:latest}
BASE_IMAGE=${MATCHX_BASE_IMAGE:-matchx/base:bookworm}
export MATCHX_BASE_IMAGE=$BASE_IMAGE

ALLOW_NO_JAR=0
SMOKE=1
for a in "$@"; do
    case $a in
        --allow-missing-jar) ALLOW_NO_JAR=1 ;;
        --no-smoke) SMOKE=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $a (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }
T0=$(date +%s)
lap() { local now; now=$(date +%s); say "   ... $1 took $(( now - ${LAP:-$T0} ))s"; LAP=$now; }

# ---- 1-2. engine and base image -------------------------------------------------------
if [ "${MATCHX_SKIP_ENSURE:-0}" != 1 ]; then
    "$HERE/ensure-docker.sh"
    "$HERE/build-base.sh"
    lap "engine + base image"
fi
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "base image $BASE_IMAGE missing (docker/build-base.sh)"

mkdir -p "$BUILD"
exec 8>"$BUILD/images.lock"
flock -w 1800 8 || die "another build-images.sh holds $BUILD/images.lock"

# ---- jar --------------------------------------------------------------------------------
JAR=""
if [ -n "${MATCHX_JAR:-}" ]; then
    [ -f "$MATCHX_JAR" ] || die "MATCHX_JAR=$MATCHX_JAR does not exist"
    JAR=$MATCHX_JAR
elif [ -f "$REPO/java-cluster/target/matchx-cluster.jar" ]; then
    JAR=$REPO/java-cluster/target/matchx-cluster.jar
else
    JAR=$(ls -t "$REPO"/java-cluster/target/*-shaded.jar 2>/dev/null | head -n1 || true)
fi
if [ -z "$JAR" ]; then
    [ "$ALLOW_NO_JAR" = 1 ] || die "no shaded jar (java-cluster/target/matchx-cluster.jar); run 'mvn -q -DskipTests package' first, or pass --allow-missing-jar for a trial build"
    say "WARNING: no jar found; building WITHOUT /opt/matchx/lib/matchx-cluster.jar (--allow-missing-jar)"
else
    say "jar: ${JAR#"$REPO"/} ($(du -h "$JAR" | cut -f1))"
fi

# ---- 3. wheelhouse --------------------------------------------------------------------------
# Runtime dependencies from pyproject.toml, and python X.Y / glibc 2.N of the image (the
# wheels must fit those, not the host's), all read by the base image's python (3.11,
# tomllib) in one container, so the host needs no particular Python for this.
INFO=$(docker run --rm -i --network none "$BASE_IMAGE" python3 -c '
import os, sys, tomllib
print("%d.%d" % sys.version_info[:2], os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[1])
print("\n".join(tomllib.load(sys.stdin.buffer)["project"].get("dependencies", [])))
' <"$REPO/pyproject.toml") || die "could not read [project.dependencies] from pyproject.toml"
read -r PYVER GLIBC_MINOR <<<"$(head -n1 <<<"$INFO")"
REQS=$(tail -n +2 <<<"$INFO")
case $(uname -m) in x86_64) ARCH=x86_64 ;; aarch64|arm64) ARCH=aarch64 ;; *) die "unsupported arch $(uname -m)" ;; esac
PLATFORM=manylinux_2_${GLIBC_MINOR}_$ARCH
# pip does not widen --platform to older manylinux tags by itself: list them all.
PLATFORM_ARGS=(--platform "manylinux2014_$ARCH")
for (( m=GLIBC_MINOR; m>=17; m-- )); do PLATFORM_ARGS+=(--platform "manylinux_2_${m}_$ARCH"); done
[ "$ARCH" = x86_64 ] && PLATFORM_ARGS+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
BUILD_REQS=("setuptools>=68" "wheel")
WHEEL_KEY=$(printf '%s\n' "$REQS" "${BUILD_REQS[@]}" "$PYVER" "$PLATFORM" | sha256sum | cut -c1-16)
WHEELS=$BUILD/wheels/$WHEEL_KEY
if [ -f "$WHEELS/.complete" ]; then
    say "wheelhouse cached: docker/.build/wheels/$WHEEL_KEY ($(ls "$WHEELS"/*.whl | wc -l) wheels)"
else
    PIP=(python3 -m pip)
    "${PIP[@]}" --version >/dev/null 2>&1 || {
        say "host has no pip: apt-get install python3-pip"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    }
    say "downloading wheels for python $PYVER / $PLATFORM -> docker/.build/wheels/$WHEEL_KEY"
    rm -rf "$WHEELS.tmp"; mkdir -p "$WHEELS.tmp"
    printf '%s\n' "$REQS" >"$WHEELS.tmp/requirements.txt"
    # PIP_FIND_LINKS etc. from the environment are dropped: only the index is used.
    env -u PIP_FIND_LINKS -u PIP_NO_INDEX "${PIP[@]}" download --quiet --dest "$WHEELS.tmp" \
        --only-binary=:all: "${PLATFORM_ARGS[@]}" --python-version "$PYVER" \
        --implementation cp \
        -r "$WHEELS.tmp/requirements.txt" "${BUILD_REQS[@]}" \
        || die "pip download failed (is PyPI reachable from this host?)"
    rm -f "$WHEELS.tmp/requirements.txt"
    touch "$WHEELS.tmp/.complete"
    rm -rf "$WHEELS"; mv "$WHEELS.tmp" "$WHEELS"
    say "    $(ls "$WHEELS"/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"
fi
lap "wheelhouse"

# ---- 4. context -------------------------------------------------------------------------
rm -rf "$CTX"; mkdir -p "$CTX/lib" "$CTX/wheels"
cp "$HERE/Dockerfile" "$CTX/Dockerfile"
printf '%s\n' "$REQS" >"$CTX/requirements.txt"
cp -p "$WHEELS"/*.whl "$CTX/wheels/"
cp -p "$REPO/pyproject.toml" "$CTX/"
if [ -f "$REPO/README.md" ]; then
    cp -p "$REPO/README.md" "$CTX/"
else
    # pyproject names README.md as the readme; setuptools fails without it.
    say "note: no README.md in the repo; the context gets a one-line stand-in"
    echo "matchx" >"$CTX/README.md"
fi
# the compiled engine is built for the host's Python; the images run the plain-Python engine
tar -C "$REPO" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.so' --exclude='native.stamp' \
    -cf - pyengine coordinator | tar -C "$CTX" -xf -
if [ -n "$JAR" ]; then cp -p "$JAR" "$CTX/lib/matchx-cluster.jar"; fi
# the member's class list: the image dumps its class data sharing archive from it (Dockerfile)
cp -p "$REPO/java-cluster/cds/member.classlist" "$CTX/lib/member.classlist"
say "context docker/.build/context: $(du -sh "$CTX" | cut -f1)"

# ---- 5. build -------------------------------------------------------------------------------
# Without the buildx plugin a newer docker CLI cannot use BuildKit: then use the classic
# builder explicitly (same Dockerfile, same layer caching).
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
VERSION=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo dev)
say "docker build -t $IMAGE (base $BASE_IMAGE, version $VERSION)"
DEPS_IMAGE=${IMAGE%%:*}-deps:${IMAGE##*:}
[ "$DEPS_IMAGE" != "$IMAGE" ] || DEPS_IMAGE=$IMAGE-deps
FILTER=(grep --line-buffered -v -e '^DEPRECATED: The legacy builder' \
        -e 'Install the buildx component' -e 'https://docs.docker.com/go/buildx/' -e '^ *$' \
        -e 'BuildKit is currently disabled' -e '^ *environment-variable\.$')
set +e
# The dependency stage gets a tag of its own: it is the cache of the slow pip layer and must
# survive the pruning below.
docker build --target deps --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$DEPS_IMAGE" "$CTX" 2>&1 | "${FILTER[@]}"
status=${PIPESTATUS[0]}
[ "$status" = 0 ] || { set -e; die "docker build (deps stage) failed (exit $status)"; }
docker build --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg MATCHX_VERSION="$VERSION" \
    -t "$IMAGE" "$CTX" 2>&1 | "${FILTER[@]}"
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || die "docker build failed (exit $status)"
lap "image build"
# Earlier builds of this image, now untagged, would pile up: drop them (build cache of the
# current image is untouched).
docker image prune -f --filter "label=org.opencontainers.image.title=matchx" >/dev/null || true
docker image prune -f --filter "label=org.matchx.stage=deps" >/dev/null || true

# ---- 6. smoke test ------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
    say "smoke test"
    docker run --rm --network none --entrypoint /bin/sh "$IMAGE" -c '
        set -e
        java -version 2>&1 | head -n1
        python3 -c "import sys, jpype, nacl; print(\"python\", sys.version.split()[0], \"jpype\", jpype.__version__, \"pynacl\", nacl.__version__)"
        matchctl --help >/dev/null && echo "matchctl ok"
        if [ -f "$MATCHX_JAR" ]; then
            python3 -c "
from pyengine import jvm
jvm.start()
import jpype
jpype.JClass(\"io.aeron.cluster.ConsensusModule\")
print(\"jvm + jar ok:\", jvm.find_jar())
"
        else
            echo "no jar in image: JVM/jar check skipped"
        fi' | sed 's/^/    /'
    lap "smoke test"
fi
say "done: $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')) in $(( $(date +%s) - T0 ))s"
