"""Faults injected into the default setup's inline hardware, seen through the device files.

``secure`` is default-key over ``base``, whose first 768 MiB are the ``inline`` backend (keyslots,
inline encryption) and whose rest is the ``legacy`` backend behind the software fallback.

- program-fail: a bio whose key must be programmed fails with EIO (dd says so); a bio served by
  the fallback and the ``plain`` device carry on; clearing the fault restores service, no remount;
- evict-fail: ``dm evict-key`` gets the driver's EIO; the data is intact afterwards;
- reset: every key is programmed again and I/O carries on; a reset whose reprogramming fails
  reports EIO, and the next bio programs the key again once the fault is cleared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from harness import FuseblkMount, MiB, require_tools
from test_dm_live_changes import dd_read, dd_write

pytestmark = pytest.mark.integration

FALLBACK_OFFSET = 800 * MiB  # in secure, beyond the inline part: the software fallback's


@pytest.fixture
def m(default_setup: FuseblkMount) -> FuseblkMount:
    require_tools("dd")
    return default_setup


def data_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def evict_secure_key(m: FuseblkMount, check: bool = True) -> Any:
    return m.dm(
        "evict-key",
        "secure",
        "--mode",
        "AES-256-XTS",
        "--key-file",
        m.key_file,
        "--data-unit-size",
        "4096",
        check=check,
    )


def hw_status(m: FuseblkMount) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(m.cli("hw", "status", "inline", "--json").stdout)
    return result


def test_program_fail_is_eio_to_dd_and_clearing_it_restores_service(
    m: FuseblkMount, tmp_path: Path
) -> None:
    secure, plain = m.dev("secure"), m.dev("plain")
    before = os.urandom(MiB)
    dd_write(secure, data_file(tmp_path, "before", before))
    dd_write(secure, data_file(tmp_path, "fb", before), FALLBACK_OFFSET)
    dd_write(plain, data_file(tmp_path, "plain", before))
    evict_secure_key(m)  # the next inline bio has to program a keyslot

    m.cli("hw", "fault", "inline", "program-fail")
    _, read_error = dd_read(secure, MiB, check=False)
    assert "Input/output error" in read_error
    after = os.urandom(MiB)
    assert "Input/output error" in dd_write(
        secure, data_file(tmp_path, "after", after), MiB, check=False
    )
    # nothing else is disturbed: the fallback's part of secure, and another device
    assert dd_read(secure, MiB, FALLBACK_OFFSET)[0] == before
    assert dd_read(plain, MiB)[0] == before
    status = hw_status(m)
    assert status["faults"] == [{"fault": "program-fail", "probability": 1.0}]
    assert all(slot["key_id"] is None for slot in status["keyslots"])  # the slot stays empty
    assert status["counters"]["fault_program_errors"] >= 2
    assert m.stats()["backends"]["inline"]["fault_program_errors"] >= 2

    m.cli("hw", "fault", "inline", "clear")
    assert hw_status(m)["faults"] == []
    assert dd_read(secure, MiB)[0] == before  # written before the fault: intact
    dd_write(secure, data_file(tmp_path, "after", after), MiB)
    assert dd_read(secure, MiB, MiB)[0] == after


def test_evict_fail_is_eio_to_the_evictor_and_loses_nothing(
    m: FuseblkMount, tmp_path: Path
) -> None:
    secure = m.dev("secure")
    data = os.urandom(MiB)
    dd_write(secure, data_file(tmp_path, "data", data))
    m.cli("hw", "fault", "inline", "evict-fail", "--count", "1")

    proc = evict_secure_key(m, check=False)
    assert proc.returncode == 1
    assert "injected evict-fail" in proc.stderr.decode()
    status = hw_status(m)
    assert status["faults"] == []  # spent
    assert status["counters"]["fault_evict_errors"] == 1
    assert dd_read(secure, MiB)[0] == data
    evict_secure_key(m)  # the next eviction succeeds


def test_reset_reprograms_the_keys_and_a_failed_reprogram_recovers_once_cleared(
    m: FuseblkMount, tmp_path: Path
) -> None:
    secure = m.dev("secure")
    data = os.urandom(MiB)
    dd_write(secure, data_file(tmp_path, "data", data))
    held = [s["key_id"] for s in hw_status(m)["keyslots"]]

    m.cli("hw", "fault", "inline", "reset")
    status = hw_status(m)
    assert [s["key_id"] for s in status["keyslots"]] == held
    assert status["counters"]["resets"] == 1
    assert dd_read(secure, MiB)[0] == data

    m.cli("hw", "fault", "inline", "program-fail")
    proc = m.cli("hw", "fault", "inline", "reset", check=False)
    assert proc.returncode == 1
    assert "injected program-fail" in proc.stderr.decode()
    assert all(slot["key_id"] is None for slot in hw_status(m)["keyslots"])
    m.cli("hw", "fault", "inline", "clear")
    assert dd_read(secure, MiB)[0] == data


def test_probabilistic_faults_show_their_seed_and_bad_requests_are_refused(
    m: FuseblkMount,
) -> None:
    m.cli("hw", "fault", "inline", "evict-fail", "--probability", "0.25", "--seed", "42")
    assert hw_status(m)["faults"] == [{"fault": "evict-fail", "probability": 0.25, "seed": 42}]
    m.cli("hw", "fault", "inline", "slow-program", "5")
    assert {"fault": "slow-program", "ms": 5} in hw_status(m)["faults"]
    m.cli("hw", "fault", "inline", "clear")

    refused = m.cli("hw", "fault", "legacy", "program-fail", check=False)
    assert refused.returncode == 1
    assert "no inline-encryption hardware" in refused.stderr.decode()
    unknown = m.cli("hw", "status", "nosuch", check=False)
    assert unknown.returncode == 1
    assert "no backend named" in unknown.stderr.decode()
    usage = m.cli("hw", "fault", "inline", "reset", "--count", "2", check=False)
    assert usage.returncode == 2
