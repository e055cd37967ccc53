#!/usr/bin/env python3
"""Benchmark the daemon with fio: the default setup's ``secure`` device against baselines.

Runs the job files in tools/fio (1 MiB sequential write and read, 4 KiB random write and read at
queue depth 1, 4 KiB random read with 4 jobs; all O_DIRECT) on:

* ``secure``   — AES-256-XTS through default-key, inline part (first 768 MiB of the device);
* ``raw-image`` — the same region of the backend image file itself (at its data offset), with
  O_DIRECT: the disk below, without fuseblk;
* ``raw-cached`` — the same, buffered: the page cache the daemon's backends actually use, i.e.
  the ceiling for fuseblk's own overhead;
* ``qemu-luks`` (with ``--peers``) — qemu-storage-daemon's FUSE export of a LUKS1
  aes-xts-plain64 image: another userspace encrypted block device behind FUSE.

By default it mounts a fresh default setup in a temporary directory (and unmounts it after);
``--mount MP --state-dir DIR`` uses a running one instead. Reports MB/s, IOPS, p50/p99
completion latency, and the daemon's peak RSS (VmHWM). Usage::

    sudo .venv/bin/python tools/bench.py [--size 512M] [--runtime 10] [--peers] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIO_DIR = HERE / "fio"
JOBS = ("seq-write", "seq-read", "rand-write", "rand-read", "rand-read-4jobs")
MiB = 1 << 20


@dataclass
class Result:
    target: str
    job: str
    mb_s: float
    iops: float
    p50_us: float
    p99_us: float


def fuseblk(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fuseblk", *args], capture_output=True, text=True, check=check
    )


def run_fio(job: str, filename: str, offset: int, size: int, runtime: int, direct: bool) -> dict:
    env = dict(
        os.environ,
        FIO_FILE=filename,
        FIO_OFFSET=str(offset),
        FIO_SIZE=str(size),
        FIO_RUNTIME=str(runtime),
        FIO_DIRECT="1" if direct else "0",
    )
    proc = subprocess.run(
        ["fio", "--output-format=json", str(FIO_DIR / f"{job}.fio")],
        capture_output=True,
        text=True,
        env=env,
        timeout=runtime * 4 + 120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fio {job} on {filename} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def summarize(target: str, job: str, report: dict) -> Result:
    stats = report["jobs"][0]
    side = stats["write"] if "write" in job else stats["read"]
    pct = side["clat_ns"].get("percentile", {})
    return Result(
        target,
        job,
        side["bw_bytes"] / 1e6,
        side["iops"],
        pct.get("50.000000", 0) / 1000,
        pct.get("99.000000", 0) / 1000,
    )


def bench(
    target: str, filename: str, offset: int, size: int, runtime: int, direct: bool = True
) -> list[Result]:
    results = []
    for job in JOBS:
        print(f"  {target}: {job} ...", file=sys.stderr, flush=True)
        report = run_fio(job, filename, offset, size, runtime, direct)
        results.append(summarize(target, job, report))
    return results


def daemon_pid(mountpoint: Path) -> int | None:
    from fuseblk.control.server import find_daemons

    wanted = os.path.abspath(mountpoint)
    return next((d.pid for d in find_daemons() if d.mountpoint == wanted), None)


def peak_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def default_mount(workdir: Path) -> Iterator[tuple[Path, Path]]:
    mnt, state = workdir / "mnt", workdir / "state"
    mnt.mkdir()
    proc = fuseblk("mount", str(mnt), "--state-dir", str(state), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"fuseblk mount failed: {proc.stderr.strip()}")
    try:
        yield mnt, state
    finally:
        fuseblk("umount", str(mnt), check=False)


@contextlib.contextmanager
def qemu_luks_export(workdir: Path, size: int) -> Iterator[Path | None]:
    """A LUKS1 aes-xts-plain64 image exported through FUSE by qemu-storage-daemon, or None."""
    qsd, qimg = shutil.which("qemu-storage-daemon"), shutil.which("qemu-img")
    if not qsd or not qimg:
        print("  qemu-luks: skipped (install qemu-utils and qemu-system-common)", file=sys.stderr)
        yield None
        return
    image, export = workdir / "luks.img", workdir / "luks-export"
    secret = "--object=secret,id=sec0,data=fuseblk-bench"
    create = [qimg, "create", "-q", "-f", "luks", secret, "-o",
              "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,"
              "hash-alg=sha256,iter-time=200", str(image), str(size)]  # fmt: skip
    made = subprocess.run(create, capture_output=True, text=True, check=False)
    if made.returncode != 0:  # PBKDF calibration can fail on a busy machine: try once more
        made = subprocess.run(create, capture_output=True, text=True, check=False)
    if made.returncode != 0:
        print(f"  qemu-luks: skipped (qemu-img failed: {made.stderr.strip()})", file=sys.stderr)
        yield None
        return
    export.touch()
    daemon = subprocess.Popen(
        [qsd, secret,
         "--blockdev", f"driver=file,node-name=file0,filename={image},cache.direct=off",
         "--blockdev", "driver=luks,node-name=luks0,file=file0,key-secret=sec0",
         "--export", f"type=fuse,id=exp0,node-name=luks0,mountpoint={export},writable=on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while export.stat().st_size != size:
            if daemon.poll() is not None or time.monotonic() > deadline:
                err = daemon.stderr.read() if daemon.stderr else ""
                print(
                    f"  qemu-luks: skipped (qemu-storage-daemon failed: {err.strip()})",
                    file=sys.stderr,
                )
                yield None
                return
            time.sleep(0.1)
        yield export
    finally:
        daemon.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(timeout=10)
        if daemon.poll() is None:
            daemon.kill()
        subprocess.run(["fusermount3", "-uz", str(export)], capture_output=True, check=False)


def print_table(results: list[Result], rss: float | None) -> None:
    header = f"{'target':<11} {'job':<16} {'MB/s':>9} {'IOPS':>9} {'p50 us':>9} {'p99 us':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.target:<11} {r.job:<16} {r.mb_s:>9.1f} {r.iops:>9.0f} {r.p50_us:>9.1f} {r.p99_us:>9.1f}"
        )
    if rss is not None:
        print(f"\nfuseblk daemon peak RSS (VmHWM): {rss:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE.parent))
    from fuseblk.sizes import parse_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mount", type=Path, help="use this running default-setup mount")
    parser.add_argument("--state-dir", type=Path, help="its state dir (for the raw-image baseline)")
    parser.add_argument("--size", default="512M", help="region of each file to use (default 512M)")
    parser.add_argument("--runtime", type=int, default=10, help="seconds per job (default 10)")
    parser.add_argument("--peers", action="store_true", help="also run qemu-storage-daemon LUKS1")
    parser.add_argument("--no-baseline", action="store_true", help="skip the raw image baseline")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    if size > 768 * MiB:
        parser.error("--size must stay within secure's inline part (768M)")
    if not shutil.which("fio"):
        parser.error("fio is not installed")

    from fuseblk.hw.image_format import DATA_OFFSET

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="fuseblk-bench-") as tmp:
        workdir = Path(tmp)
        with contextlib.ExitStack() as stack:
            if args.mount:
                mnt, state = args.mount, args.state_dir
            else:
                mnt, state = stack.enter_context(default_mount(workdir))
            pid = daemon_pid(mnt)
            results += bench("secure", str(mnt / "secure"), 0, size, args.runtime)
            rss = peak_rss_mb(pid)
        if not args.no_baseline and state is not None:
            image = state / "inline.img"
            results += bench("raw-image", str(image), DATA_OFFSET, size, args.runtime)
            results += bench("raw-cached", str(image), DATA_OFFSET, size, args.runtime, False)
        if args.peers:
            with qemu_luks_export(workdir, size) as export:
                if export is not None:
                    results += bench("qemu-luks", str(export), 0, size, args.runtime)
    print_table(results, rss)
    if args.json:
        args.json.write_text(
            json.dumps({"results": [asdict(r) for r in results], "peak_rss_mb": rss}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
