#!/usr/bin/env bash
# Build the image and run the integration suite in a container; exit with the container's status.
#
# Starts a Docker engine if none answers (Debian's docker.io, no bridge network: builds use the
# host network, test runs have none), makes the base image locally (tools/docker-base.sh), passes
# the host's extra CA certificates to the build stage only, and hands the container /dev/fuse and
# the loop devices. Extra arguments replace the container's command.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${FUSEBLK_IMAGE:-fuseblk}"
RUN_TIMEOUT="${FUSEBLK_DOCKER_TIMEOUT:-600}"  # seconds for the container run; then it is killed
CONTAINER="fuseblk-test-$$"

stage() { printf '[docker-test] %s: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

ensure_engine() {
    docker info >/dev/null 2>&1 && return 0
    if ! command -v dockerd >/dev/null; then
        stage "installing docker.io"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    fi
    stage "starting dockerd"
    setsid nohup dockerd --bridge=none --iptables=false >/var/log/fuseblk-dockerd.log 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "dockerd did not come up; see /var/log/fuseblk-dockerd.log" >&2
    return 1
}

# PEM certificates this machine added to its trust store (a TLS-inspecting proxy's CA, say):
# pip inside the build needs them exactly as pip outside does.
extra_ca_certs() {
    local f
    for f in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$f" ] && cat "$f"
    done
    return 0
}

build_args=(--build-arg "EXTRA_CA_CERTS=$(extra_ca_certs)")
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")

device_args=(--device /dev/fuse)
if [ -e /dev/loop-control ]; then
    # `losetup --find` makes the kernel create a free loop device when all are busy, so the
    # container gets at least one free node (it cannot see nodes created after it starts).
    losetup --find >/dev/null 2>&1 || true
    device_args+=(--device /dev/loop-control)
    for dev in /dev/loop[0-9]*; do
        [ -b "$dev" ] && device_args+=(--device "$dev")
    done
fi

ensure_engine
stage "base image"
bash tools/docker-base.sh
stage "build $IMAGE"
# The legacy builder is all a 20.10 engine without buildx offers; it handles this Dockerfile.
build() {
    local log
    log=$(mktemp)
    if ! DOCKER_BUILDKIT=0 docker build --network host "${build_args[@]}" "$@" . >"$log" 2>&1; then
        grep -v -e '^ ---> ' -e '^Removing intermediate' "$log" | tail -n 40 >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}
# The build stage gets a tag too: it is the layer cache of the next build (compiled
# dependencies), and tagged it survives the pruning of the untagged images older builds left.
build --target build -t "$IMAGE-build"
build -t "$IMAGE"
docker image prune -f >/dev/null
stage "run the suite in $IMAGE"
# A hung test must not hang CI: the client is timed out and the container removed with it.
trap 'docker rm -f "$CONTAINER" >/dev/null 2>&1 || true' EXIT
status=0
# --init: daemons that fork and outlive their parent need a PID 1 that reaps them.
timeout "$RUN_TIMEOUT" docker run --rm --init --name "$CONTAINER" --network none --cap-add SYS_ADMIN \
    "${device_args[@]}" "$IMAGE" "$@" || status=$?
[ "$status" = 124 ] && echo "container run timed out after ${RUN_TIMEOUT}s" >&2
stage "container exited with $status"
exit "$status"
