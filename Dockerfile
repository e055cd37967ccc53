# Runs fuseblk's integration suite (real FUSE mounts, loop devices, ext4, fio) in a container.
#
#   docker build --network host -t fuseblk .
#   docker run --rm --init --network none --device /dev/fuse --cap-add SYS_ADMIN \
#       --device /dev/loop-control --device /dev/loop0 --device /dev/loop1 fuseblk
#
# Two stages so that the compiler, the headers and any build-only trust anchors never reach the
# final image: the build stage compiles pyfuse3 into /opt/venv, the final stage copies that venv
# next to the runtime packages. Works with the legacy builder (no BuildKit-only syntax).

FROM debian:bookworm-slim AS build
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        ca-certificates python3 python3-venv python3-dev gcc pkg-config libfuse3-dev >/dev/null \
    && rm -rf /var/lib/apt/lists/*
# Extra PEM certificates pip must trust (e.g. a TLS-inspecting egress proxy) and an alternative
# index. Build args of this stage stay out of the final image and its history.
ARG EXTRA_CA_CERTS=""
ARG PIP_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from the metadata alone, so that editing the sources does not rebuild them.
COPY setup.cfg pyproject.toml README.md ./
RUN mkdir -p fuseblk backends && touch fuseblk/__init__.py \
    && cp /etc/ssl/certs/ca-certificates.crt /etc/pip-ca.pem \
    && if [ -n "$EXTRA_CA_CERTS" ]; then printf '%s\n' "$EXTRA_CA_CERTS" >> /etc/pip-ca.pem; fi \
    && python3 -m venv /opt/venv \
    && PIP_CERT=/etc/pip-ca.pem /opt/venv/bin/pip install -q --no-cache-dir '.[test]' \
    && /opt/venv/bin/pip uninstall -q -y fuseblk \
    && rm -rf fuseblk backends build ./*.egg-info
COPY backends backends
COPY fuseblk fuseblk
# Editable, like tools/setup.sh: the final stage puts the same sources at /src, so the package
# and the tests see one source tree (backends/ included).
RUN PIP_CERT=/etc/pip-ca.pem /opt/venv/bin/pip install -q --no-cache-dir --no-deps -e . \
    && /opt/venv/bin/python -c "import fuseblk, pyfuse3"

FROM debian:bookworm-slim
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 fuse3 fio e2fsprogs util-linux mount \
        nbdkit python3-libnbd qemu-utils qemu-system-common >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
# libnbd's Python module comes from Debian (python3-libnbd): the venv sees its directory.
RUN echo /usr/lib/python3/dist-packages \
        > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/debian-system-packages.pth" \
    && /opt/venv/bin/python -c "import nbd"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . .
# Every test that drives a real mount (tests/integration and the daemon/FUSE tests marked
# `integration`); `docker run ... fuseblk pytest -q tests` runs the unit tests as well.
CMD ["pytest", "-q", "-p", "no:cacheprovider", "-m", "integration", "tests"]
