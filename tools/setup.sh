#!/usr/bin/env bash
# Set up fuseblk on a fresh Debian machine: system packages, a virtualenv in .venv, the package.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if [ -z "${FUSEBLK_SKIP_APT:-}" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv fio e2fsprogs util-linux \
        nbdkit python3-libnbd qemu-utils qemu-system-common >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# libnbd's Python module (NBD backends) is Debian's python3-libnbd, not on PyPI: show the venv
# the directory it lives in. Entries of a .pth file come after the venv's own packages.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo /usr/lib/python3/dist-packages > "$site/debian-system-packages.pth"
echo "fuseblk installed in $(pwd)/.venv"
