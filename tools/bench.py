#!/usr/bin/env python3
"""Benchmark the daemon with fio: the default setup's devices against a floor and a peer.

Runs the job files in tools/fio (1 MiB sequential write and read, 4 KiB random write and read at
queue depth 1, 4 KiB random read with 4 jobs; all O_DIRECT) on:

* ``secure``   — AES-256-XTS through default-key, inline part (first 768 MiB of the device);
* ``plain``    — the linear device without encryption;
* ``floor``    — tools/passthrough_floor.py: a bare pyfuse3 + trio pass-through (direct_io,
  ``os.preadv``/``os.pwrite``) over the same region of the same image file as ``secure``'s
  backend: what any pure-Python FUSE block device pays before doing anything of its own;
* ``qemu-luks`` (with ``--peers``) — qemu-storage-daemon's FUSE export of a LUKS1
  aes-xts-plain64 image: another userspace encrypted block device behind FUSE (Debian packages
  ``qemu-utils`` and ``qemu-system-common``);
* ``secure-nbd`` / ``secure-local`` (with ``--nbd``) — a ``secure``-like device (default-key
  AES-256-XTS over ``ufs`` hardware) over an image on nbdkit's file export (a Unix socket, see
  docs/nbd.md), and the same over an identical image attached as a local file: what the NBD
  storage costs;
* ``raw-image`` / ``raw-cached`` (with ``--raw``) — the image file itself with and without
  O_DIRECT: the disk and the page cache below fuseblk;
* ``secure@REV`` / ``plain@REV`` (with ``--against REV``) — the same devices served by the code
  of git revision ``REV`` (its ``fuseblk`` and ``backends`` folders, in a second mount of a fresh
  default setup): the A/B of a change, measured round by round beside the change itself, which
  on a noisy machine says more than two runs an hour apart.

Every job runs ``--rounds`` times on every target, the rounds interleaved so that a noisy
neighbour hits all targets alike; the tables show medians. The ratios compare like with like
from the same run: MB/s for the sequential jobs, IOPS for the random ones. The fuseblk daemon's
peak RSS (VmHWM) is read before it unmounts. Usage::

    sudo .venv/bin/python tools/bench.py [--size 512M] [--runtime 5] [--rounds 3] [--peers] [--nbd]
                                         [--against REV] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
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


def fuseblk(
    *args: str, check: bool = True, code: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; ``code`` is a folder whose ``fuseblk`` package runs instead of this tree's.

    ``python -m`` puts the working directory first on the module path, and the daemon later
    changes directory: ``code`` is both, so that no import can reach the installed package.
    """
    env = None
    if code is not None:
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")])),
        )
    return subprocess.run(
        [sys.executable, "-m", "fuseblk", *args],
        capture_output=True,
        text=True,
        check=check,
        cwd=code,
        env=env,
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
    from fuseblk.control.runtime import find_daemons

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


def stop(proc: subprocess.Popen[str], unmount: Path | None = None) -> None:
    """End a server the benchmark started (SIGTERM, then SIGKILL after 10 s) and lazily unmount
    the FUSE mount it served, if any."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()
    if unmount is not None:
        subprocess.run(["fusermount3", "-uz", str(unmount)], capture_output=True, check=False)


@contextlib.contextmanager
def default_mount(
    workdir: Path, label: str = "", code: Path | None = None
) -> Iterator[tuple[Path, Path]]:
    """A fresh default setup mounted under ``workdir`` (names suffixed ``label``), served by
    this tree's code or by ``code``'s."""
    mnt, state = workdir / f"mnt{label}", workdir / f"state{label}"
    mnt.mkdir()
    proc = fuseblk("mount", str(mnt), "--state-dir", str(state), check=False, code=code)
    if proc.returncode != 0:
        raise SystemExit(f"fuseblk mount failed: {proc.stderr.strip()}")
    try:
        yield mnt, state
    finally:
        fuseblk("umount", str(mnt), check=False, code=code)


def revision_code(rev: str, workdir: Path) -> Path:
    """The ``fuseblk`` and ``backends`` folders of git revision ``rev``, extracted under
    ``workdir``; exits with git's message if ``rev`` names nothing."""
    dest = workdir / "code-against"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", "--format=tar", rev, "fuseblk", "backends"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(f"--against {rev}: {archive.stderr.decode(errors='replace').strip()}")
    # our own tree's files: tar(1) rather than tarfile, whose safe filter not every 3.11 has
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


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
        stop(daemon, unmount=export)


@contextlib.contextmanager
def nbd_export(workdir: Path, size: int) -> Iterator[str | None]:
    """nbdkit's file export of a new ``ufs`` image of ``size`` data bytes, as its URI, or None."""
    nbdkit = shutil.which("nbdkit")
    if not nbdkit:
        print("  secure-nbd: skipped (install nbdkit and python3-libnbd)", file=sys.stderr)
        yield None
        return
    disk, sock = workdir / "nbd.img", workdir / "nbd.sock"
    with open(disk, "wb") as f:
        f.truncate(2 * MiB + size)
    server = subprocess.Popen(
        [nbdkit, "-f", "-U", str(sock), "file", str(disk)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    uri = f"nbd+unix:///?socket={sock}"
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read() if server.stderr and server.poll() is not None else ""
                print(f"  secure-nbd: skipped (nbdkit failed: {err.strip()})", file=sys.stderr)
                yield None
                return
            time.sleep(0.05)
        made = fuseblk("image", "create", uri, "--size", str(size), "--profile", "ufs", check=False)
        if made.returncode != 0:
            print(f"  secure-nbd: skipped ({made.stderr.strip()})", file=sys.stderr)
            yield None
            return
        yield uri
    finally:
        stop(server)


def secure_like(mnt: Path, name: str, backend: str, size: int) -> str:
    """A default-key AES-256-XTS device over ``backend`` (a fresh random key); its file."""
    table = (
        f"0 {size // 512} default-key aes-xts-plain64 {os.urandom(64).hex()} 0 {backend} 0 "
        "2 sector_size:4096 iv_large_sectors"
    )
    fuseblk("dm", "create", name, "--table", table, "--mount", str(mnt))
    return str(mnt / name)


@contextlib.contextmanager
def floor_mount(workdir: Path, image: Path, offset: int, size: int) -> Iterator[Path | None]:
    """tools/passthrough_floor.py over ``image``'s region; yields its file, or None if it failed."""
    mnt = workdir / "floor"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "passthrough_floor.py"), str(image), str(mnt),
         "--offset", str(offset), "--size", str(size)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    disk = mnt / "disk"
    try:
        deadline = time.monotonic() + 20
        while not disk.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
                print(f"  floor: skipped (pass-through failed: {err.strip()})", file=sys.stderr)
                yield None
                return
            time.sleep(0.05)
        yield disk
    finally:
        stop(proc, unmount=mnt)


def metric(r: Result) -> float:
    """What a job is judged by: throughput for sequential jobs, IOPS for random ones."""
    return r.mb_s if r.job.startswith("seq") else r.iops


def medians(results: list[Result]) -> list[Result]:
    """One result per (target, job): the median of its rounds, field by field."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.target, r.job), []).append(r)
    return [
        Result(
            target,
            job,
            statistics.median(r.mb_s for r in rs),
            statistics.median(r.iops for r in rs),
            statistics.median(r.p50_us for r in rs),
            statistics.median(r.p99_us for r in rs),
        )
        for (target, job), rs in groups.items()
    ]


RATIOS = (
    ("secure", "floor"),
    ("secure", "qemu-luks"),
    ("plain", "floor"),
    ("secure-nbd", "secure-local"),
)


def against_ratios(rev: str) -> tuple[tuple[str, str], ...]:
    """The change against revision ``rev``: each device over its twin served by ``rev``'s code."""
    return (("secure", f"secure@{rev}"), ("plain", f"plain@{rev}"))


def ratios(
    median: list[Result], pairs: tuple[tuple[str, str], ...] = RATIOS
) -> dict[str, dict[str, float]]:
    """``{"secure/floor": {job: ratio}}`` for every pair both of whose targets ran."""
    by = {(r.target, r.job): metric(r) for r in median}
    out: dict[str, dict[str, float]] = {}
    for top, base in pairs:
        row = {
            job: by[(top, job)] / by[(base, job)]
            for job in JOBS
            if (top, job) in by and by.get((base, job))
        }
        if row:
            out[f"{top}/{base}"] = row
    return out


def print_report(
    median: list[Result],
    rounds: int,
    rss: float | None,
    pairs: tuple[tuple[str, str], ...] = RATIOS,
) -> None:
    width = max([12, *(len(r.target) for r in median)])
    header = f"{'target':<{width}} {'job':<16} {'MB/s':>9} {'IOPS':>9} {'p50 us':>9} {'p99 us':>9}"
    print(f"medians of {rounds} round(s)")
    print(header)
    print("-" * len(header))
    for r in median:
        print(
            f"{r.target:<{width}} {r.job:<16} {r.mb_s:>9.1f} {r.iops:>9.0f} "
            f"{r.p50_us:>9.1f} {r.p99_us:>9.1f}"
        )
    table = ratios(median, pairs)
    if table:
        cell = max([17, *(len(name) for name in table)])
        print("\nratios (MB/s for sequential jobs, IOPS for random ones)")
        print(f"{'job':<16}" + "".join(f" {name:>{cell}}" for name in table))
        for job in JOBS:
            cells = [
                f"{table[n][job]:>{cell}.2f}" if job in table[n] else f"{'-':>{cell}}"
                for n in table
            ]
            print(f"{job:<16}" + "".join(f" {c}" for c in cells))
    if rss is not None:
        print(f"\nfuseblk daemon peak RSS (VmHWM): {rss:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE.parent))
    from fuseblk.sizes import parse_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512M", help="region of each file to use (default 512M)")
    parser.add_argument("--runtime", type=int, default=5, help="seconds per job (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each job (default 3)")
    parser.add_argument("--peers", action="store_true", help="also run qemu-storage-daemon LUKS1")
    parser.add_argument("--raw", action="store_true", help="also run the raw image file")
    parser.add_argument(
        "--nbd", action="store_true", help="also run secure-like devices over nbdkit and a file"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run secure and plain on git revision REV's code, interleaved: the A/B of a change",
    )
    parser.add_argument("--only", help="comma-separated targets to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    if size > 768 * MiB:
        parser.error("--size must stay within secure's inline part (768M)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not shutil.which("fio"):
        parser.error("fio is not installed")

    from fuseblk.hw.image_format import DATA_OFFSET

    runs: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="fuseblk-bench-") as tmp:
        workdir = Path(tmp)
        with contextlib.ExitStack() as stack:
            # the export outlives the mount: unmounting flushes the backend over it
            nbd_uri = stack.enter_context(nbd_export(workdir, size)) if args.nbd else None
            mnt, state = stack.enter_context(default_mount(workdir))
            pid = daemon_pid(mnt)
            image = state / "inline.img"
            # name -> (file, offset, O_DIRECT)
            targets: dict[str, tuple[str, int, bool]] = {
                "secure": (str(mnt / "secure"), 0, True),
                "plain": (str(mnt / "plain"), 0, True),
            }
            floor = stack.enter_context(floor_mount(workdir, image, DATA_OFFSET, size))
            if floor is not None:
                targets["floor"] = (str(floor), 0, True)
            if args.peers:
                export = stack.enter_context(qemu_luks_export(workdir, size))
                if export is not None:
                    targets["qemu-luks"] = (str(export), 0, True)
            if nbd_uri is not None:
                local = workdir / "local.img"
                fuseblk("image", "create", str(local), "--size", str(size), "--profile", "ufs")
                targets["secure-nbd"] = (secure_like(mnt, "secure-nbd", nbd_uri, size), 0, True)
                targets["secure-local"] = (
                    secure_like(mnt, "secure-local", str(local), size),
                    0,
                    True,
                )
            if args.raw:
                targets["raw-image"] = (str(image), DATA_OFFSET, True)
                targets["raw-cached"] = (str(image), DATA_OFFSET, False)
            if args.against:
                code = revision_code(args.against, workdir)
                old_mnt, _ = stack.enter_context(default_mount(workdir, "-against", code))
                for device in ("secure", "plain"):
                    targets[f"{device}@{args.against}"] = (str(old_mnt / device), 0, True)
            if args.only:
                wanted = set(args.only.split(","))
                targets = {n: t for n, t in targets.items() if n in wanted}
            for rnd in range(args.rounds):
                print(f"round {rnd + 1} of {args.rounds}", file=sys.stderr, flush=True)
                for name, (filename, offset, direct) in targets.items():
                    runs += bench(name, filename, offset, size, args.runtime, direct)
            rss = peak_rss_mb(pid)
    median = medians(runs)
    pairs = RATIOS + (against_ratios(args.against) if args.against else ())
    print_report(median, args.rounds, rss, pairs)
    if args.json:
        report = {
            "rounds": args.rounds,
            "runtime_s": args.runtime,
            "size": size,
            "medians": [asdict(r) for r in median],
            "runs": [asdict(r) for r in runs],
            "ratios": ratios(median, pairs),
            "peak_rss_mb": rss,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
