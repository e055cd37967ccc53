"""The vectorised XTS tweak table agrees with α-multiplication done one step at a time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.ciphers.gf128 import mul_alpha_int, xts_tweaks
from fuseblk.ciphers.ivs import dun_ivs
from fuseblk.dun import dun_iv


def _as_lanes(values: list[int]) -> np.ndarray:
    raw = b"".join(v.to_bytes(16, "little") for v in values)
    return np.frombuffer(raw, dtype=np.uint64).reshape(len(values), 2)


@pytest.mark.parametrize("blocks", [1, 2, 3, 32, 56, 57, 58, 64, 100, 256, 1024, 4096])
def test_every_tweak_is_the_first_times_alpha_to_the_block_index(blocks: int) -> None:
    firsts = [0, 1, (1 << 128) - 1, 1 << 127, 0x0123456789ABCDEF_FEDCBA9876543210]
    table = xts_tweaks(_as_lanes(firsts), blocks).copy()
    for u, t0 in enumerate(firsts):
        t = t0
        for j in range(blocks):
            assert int.from_bytes(table[u, j].tobytes(), "little") == t, (u, j)
            t = mul_alpha_int(t)


@settings(max_examples=30, deadline=None)
@given(
    firsts=st.lists(st.integers(0, (1 << 128) - 1), min_size=1, max_size=130),
    blocks=st.sampled_from([1, 32, 256, 300, 1024]),
)
def test_many_units_at_once_match_one_at_a_time(firsts: list[int], blocks: int) -> None:
    table = xts_tweaks(_as_lanes(firsts), blocks).copy()
    for u, t0 in enumerate(firsts):
        for j in {0, min(1, blocks - 1), blocks // 2, blocks - 1}:
            assert int.from_bytes(table[u, j].tobytes(), "little") == mul_alpha_int(t0, j)


def test_alpha_reference_wraps_with_0x87() -> None:
    assert mul_alpha_int(1 << 127) == 0x87
    assert mul_alpha_int(1, 128) == 0x87


@pytest.mark.parametrize("iv_size", [16, 32])
@pytest.mark.parametrize(
    "dun", [0, 7, (1 << 64) - 3, (1 << 128) - 2, (1 << 192) - 1, (1 << 256) - 2]
)
def test_ivs_of_a_run_carry_between_lanes_and_truncate(dun: int, iv_size: int) -> None:
    ivs = dun_ivs(dun, 6, iv_size)
    for i in range(6):
        assert ivs[i].tobytes() == dun_iv(dun + i, iv_size)
