"""Faults injected into an engine's keyslot operations, and what the block layer makes of them.

The kernel is the reference (block/blk-crypto-profile.c): a failed ``keyslot_program`` fails the
bio that needed the slot with ``BLK_STS_IOERR`` (EIO) and the slot holds nothing; a failed
``keyslot_evict`` is returned to the evictor and the key is unlinked anyway; a controller reset
is followed by ``blk_crypto_reprogram_all_keys``. Faults are memory only.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from control_helpers import cli_exit_status

from fuseblk.bio import Bio
from fuseblk.cli.hw_cmd import status_lines
from fuseblk.control.protocol import decode_request, encode_request
from fuseblk.crypt_context import BioCryptContext
from fuseblk.errors import FuseblkError
from fuseblk.hw.engine import InlineEncryptionEngine
from fuseblk.hw.factory import create_backend, open_backend
from fuseblk.hw.faults import FaultKind, FaultPlan
from fuseblk.hw.profiles import load_profile
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode
from fuseblk.stats import Counters

MiB = 1 << 20


def new_key() -> BlkCryptoKey:
    return BlkCryptoKey.create(CryptoMode.AES_256_XTS, os.urandom(64), 4096, 8)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return tmp_path / "tiny.img"


@pytest.fixture
def tiny(image: Path) -> Iterator[InlineEncryptionEngine]:
    backend = create_backend(image, 16 * MiB, load_profile("tiny"), label="tiny")
    yield backend
    backend.abandon()  # a no-op after close()


async def write(
    engine: InlineEncryptionEngine, key: BlkCryptoKey, offset: int, data: bytes
) -> None:
    await engine.submit(Bio.write(offset, data, BioCryptContext.at(key, offset // 4096)))


async def read(engine: InlineEncryptionEngine, key: BlkCryptoKey, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    await engine.submit(Bio.read(offset, buf, BioCryptContext.at(key, offset // 4096)))
    return bytes(buf)


def slot_of(engine: InlineEncryptionEngine, key: BlkCryptoKey) -> int | None:
    assert engine.crypto_profile is not None
    return engine.crypto_profile.find_slot(key)


# -- the plan ---------------------------------------------------------------------------------------


def test_counted_fault_fires_that_many_times_then_is_spent() -> None:
    counters = Counters()
    plan = FaultPlan("hw", counters)
    plan.fail(FaultKind.PROGRAM_FAIL, count=2)
    for _ in range(2):
        with pytest.raises(FuseblkError) as exc:
            plan.check(FaultKind.PROGRAM_FAIL, 0)
        assert exc.value.errno == errno.EIO
    plan.check(FaultKind.PROGRAM_FAIL, 0)
    assert plan.to_json() == []
    assert counters["fault_program_errors"] == 2


def test_probabilistic_fault_replays_with_the_same_seed() -> None:
    def outcomes(seed: int) -> list[bool]:
        plan = FaultPlan("hw", Counters())
        plan.fail(FaultKind.EVICT_FAIL, probability=0.5, seed=seed)
        fired = []
        for _ in range(64):
            try:
                plan.check(FaultKind.EVICT_FAIL, 1)
                fired.append(False)
            except FuseblkError:
                fired.append(True)
        return fired

    first = outcomes(7)
    assert first == outcomes(7)
    assert any(first) and not all(first)
    assert first != outcomes(8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 0},
        {"probability": 1.5},
        {"probability": float("nan")},
        {"count": 1, "probability": 0.5},
    ],
)
def test_bad_fault_arguments_are_einval(kwargs: dict[str, float]) -> None:
    plan = FaultPlan("hw", Counters())
    with pytest.raises(FuseblkError) as exc:
        plan.fail(FaultKind.PROGRAM_FAIL, **kwargs)  # type: ignore[arg-type]
    assert exc.value.errno == errno.EINVAL


# -- the engine -------------------------------------------------------------------------------------


async def test_failed_program_fails_the_bio_with_eio_and_leaves_the_slot_empty(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    data = os.urandom(8192)
    await write(tiny, key, 0, data)
    await tiny.evict_key(key)
    tiny.faults.fail(FaultKind.PROGRAM_FAIL, count=1)
    with pytest.raises(FuseblkError) as exc:
        await read(tiny, key, 0, 8192)
    assert exc.value.errno == errno.EIO
    assert slot_of(tiny, key) is None
    assert all(not s.programmed for s in tiny.crypto_profile.slot_table())  # type: ignore[union-attr]
    assert await read(tiny, key, 0, 8192) == data  # the fault is spent: service is back
    assert tiny.counters["fault_program_errors"] == 1


async def test_failed_evict_is_returned_to_the_evictor_and_the_key_is_unlinked(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    data = os.urandom(4096)
    await write(tiny, key, 4096, data)
    tiny.faults.fail(FaultKind.EVICT_FAIL)
    with pytest.raises(FuseblkError) as exc:
        await tiny.evict_key(key)
    assert exc.value.errno == errno.EIO
    assert slot_of(tiny, key) is None  # __blk_crypto_evict_key clears slot->key even on error
    tiny.faults.clear()
    assert await read(tiny, key, 4096, 4096) == data


async def test_reset_reprograms_every_key_the_profile_holds(tiny: InlineEncryptionEngine) -> None:
    keys = [new_key(), new_key()]
    for i, key in enumerate(keys):
        await write(tiny, key, i * 4096, bytes([i + 1]) * 4096)
    profile = tiny.crypto_profile
    assert profile is not None
    programs = profile.counters["programs"]
    slots = [slot_of(tiny, k) for k in keys]
    await tiny.reset()
    assert [slot_of(tiny, k) for k in keys] == slots
    assert profile.counters["programs"] == programs  # reprogramming is not a miss
    assert tiny.counters["resets"] == 1
    for i, key in enumerate(keys):
        assert await read(tiny, key, i * 4096, 4096) == bytes([i + 1]) * 4096
    assert profile.counters["programs"] == programs  # and the keys were hits afterwards


async def test_reset_while_programming_fails_empties_the_slots_and_reports_eio(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    await write(tiny, key, 0, b"k" * 4096)
    tiny.faults.fail(FaultKind.PROGRAM_FAIL)
    with pytest.raises(FuseblkError) as exc:
        await tiny.reset()
    assert exc.value.errno == errno.EIO
    assert slot_of(tiny, key) is None
    tiny.faults.clear()
    assert await read(tiny, key, 0, 4096) == b"k" * 4096


async def test_slow_program_delays_misses_only(tiny: InlineEncryptionEngine) -> None:
    key = new_key()
    tiny.faults.slow_program(50)
    start = trio.current_time()
    await write(tiny, key, 0, b"s" * 4096)
    assert trio.current_time() - start >= 0.05
    await write(tiny, key, 0, b"s" * 4096)  # a hit: no programming
    assert tiny.counters["fault_slow_programs"] == 1


async def test_faults_are_not_recorded_in_the_image(
    tiny: InlineEncryptionEngine, image: Path
) -> None:
    tiny.faults.fail(FaultKind.PROGRAM_FAIL, count=3)
    await tiny.close()
    again = open_backend(image)
    try:
        assert again.faults.to_json() == []
        key = new_key()
        await write(again, key, 0, b"x" * 4096)
    finally:
        await again.close()


# -- the control verbs ------------------------------------------------------------------------------


def test_a_probability_is_a_json_fraction() -> None:
    for p in (1.0, 0.25):
        req = decode_request(
            encode_request(1, "hw_fault", {"name": "hw", "fault": "evict-fail", "probability": p})
        )
        assert req.args["probability"] == p


# -- the command line -------------------------------------------------------------------------------


def test_hw_status_text_shows_faults_keyslots_and_counters() -> None:
    status = {
        "name": "inline",
        "hardware": "ufs",
        "faults": [{"fault": "program-fail", "remaining": 2}, {"fault": "slow-program", "ms": 5}],
        "keyslots": [
            {"index": 0, "key_id": "ab12", "refs": 1},
            {"index": 1, "key_id": None, "refs": 0},
        ],
        "counters": {"fault_program_errors": 3, "resets": 0},
    }
    lines = status_lines(status)
    assert lines[:3] == [
        "inline: ufs",
        "fault: program-fail remaining=2",
        "fault: slow-program ms=5",
    ]
    assert "keyslot 0: ab12 refs=1" in lines and "keyslot 1: empty refs=0" in lines
    assert any(line.split() == ["fault_program_errors", "3"] for line in lines)


@pytest.mark.parametrize(
    "argv",
    [
        ["hw", "fault", "inline", "slow-program"],
        ["hw", "fault", "inline", "program-fail", "5"],
        ["hw", "fault", "inline", "clear", "--count", "1"],
        ["hw", "fault", "inline", "evict-fail", "--seed", "1"],
        ["hw", "fault", "inline", "evict-fail", "--count", "1", "--probability", "0.5"],
        ["hw", "fault", "inline", "evict-fail", "--probability", "2"],
    ],
)
def test_bad_hw_fault_command_lines_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_exit_status(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
