#!/usr/bin/env bash
# Make the base image debian:bookworm-slim locally when it is absent: no image registry is
# reachable from these machines, so debootstrap a minimal bookworm and import it under the name
# the Dockerfile uses (users with a registry simply pull the real one).
set -euo pipefail
IMAGE="${FUSEBLK_BASE_IMAGE:-debian:bookworm-slim}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE present"
    exit 0
fi

# The Debian mirror this machine's apt already uses (deb822 or one-line sources).
mirror="${FUSEBLK_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ {print $2}' | grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)
fi
if [ -z "$mirror" ]; then
    mirror=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{print $2}' | grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)
fi
mirror="${mirror:-http://deb.debian.org/debian}"

command -v debootstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
root=$(mktemp -d /var/tmp/fuseblk-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    exit 1
}
rm -f "$root.log"
tar -C "$root" -c . | docker import - "$IMAGE" >/dev/null
echo "base image $IMAGE imported"
