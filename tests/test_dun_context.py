"""DUN arithmetic and encryption contexts through split, slice, remap and merge (properties)."""

from __future__ import annotations

import errno

import pytest
from device_helpers import make_key
from hypothesis import given
from hypothesis import strategies as st

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dun import DUN_BITS, Dun, dun_advance, dun_from_int, dun_iv, dun_to_int
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey

U64 = (1 << 64) - 1
KEYS = [
    make_key(1, dus=16, dun_bytes=16),
    make_key(2, dus=512, dun_bytes=16),
    make_key(3, dus=4096, dun_bytes=16),
    make_key(4, dus=512, dun_bytes=16),
]


def kernel_increment(dun: Dun, inc: int) -> Dun:
    """``bio_crypt_dun_increment`` limb by limb, as the kernel writes it: the reference model."""
    limbs = list(dun)
    for i in range(4):
        if not inc:
            break
        limbs[i] += inc
        # carry 1 out of this limb if it overflowed; the remaining increment is only the carry
        inc = 1 if limbs[i] > U64 else 0
        limbs[i] &= U64
    return (limbs[0], limbs[1], limbs[2], limbs[3])


limb = st.one_of(st.integers(0, U64), st.sampled_from([0, 1, U64 - 1, U64]))
duns = st.tuples(limb, limb, limb, limb)
# Values close to a limb boundary (or to the top), where carries happen.
near_boundary = st.builds(
    lambda bit, delta: ((1 << bit) + delta) % (1 << DUN_BITS),
    st.sampled_from([64, 128, 192, 256]),
    st.integers(-16, 16),
)
keys = st.sampled_from(KEYS)


@given(duns, st.integers(0, U64))
def test_dun_advance_carries_between_limbs_like_the_kernel(dun: Dun, units: int) -> None:
    assert dun_advance(dun, units) == kernel_increment(dun, units)


@given(near_boundary, st.integers(0, 64))
def test_dun_advance_near_limb_boundaries(start: int, units: int) -> None:
    dun = dun_from_int(start)
    assert dun_advance(dun, units) == kernel_increment(dun, units)
    assert dun_to_int(dun_advance(dun, units)) == (start + units) % (1 << DUN_BITS)


def test_dun_carry_into_the_next_limb() -> None:
    assert dun_advance((U64, 5, 0, 0), 1) == (0, 6, 0, 0)
    assert dun_advance((U64, U64, U64, 0), 2) == (1, 0, 0, 1)


def test_top_limb_wraps_to_zero() -> None:
    assert dun_advance((U64, U64, U64, U64), 1) == (0, 0, 0, 0)


@given(duns, st.integers(0, 1 << 40), st.integers(0, 1 << 40))
def test_advancing_twice_is_advancing_by_the_sum(dun: Dun, a: int, b: int) -> None:
    assert dun_advance(dun_advance(dun, a), b) == dun_advance(dun, a + b)


@given(st.integers(0, (1 << DUN_BITS) - 1), st.sampled_from([8, 16, 32]))
def test_iv_is_the_little_endian_dun_truncated(dun: int, iv_size: int) -> None:
    iv = dun_iv(dun, iv_size)
    assert len(iv) == iv_size
    assert int.from_bytes(iv, "little") == dun % (1 << (8 * iv_size))


@st.composite
def bios_with_ctx(draw: st.DrawFn) -> Bio:
    key = draw(keys)
    units = draw(st.integers(2, 16))
    start = draw(st.one_of(near_boundary, st.integers(0, (1 << DUN_BITS) - 1)))
    data = bytes(range(256)) * (units * key.data_unit_size // 256 + 1)
    return Bio.write(
        draw(st.integers(0, 1 << 30)) * 512,
        data[: units * key.data_unit_size],
        BioCryptContext.at(key, start),
    )


@given(bios_with_ctx(), st.data())
def test_split_advances_the_tail_dun_by_whole_units(bio: Bio, data: st.DataObject) -> None:
    assert bio.crypt_ctx is not None
    dus = bio.crypt_ctx.key.data_unit_size
    at = data.draw(st.integers(1, bio.length // dus - 1)) * dus
    head, tail = bio.split(at)
    assert head.crypt_ctx == bio.crypt_ctx
    assert tail.crypt_ctx is not None
    assert tail.crypt_ctx.dun == dun_advance(bio.crypt_ctx.dun, at // dus)
    assert tail.offset == bio.offset + at
    assert bytes(head.buf or b"") + bytes(tail.buf or b"") == bytes(bio.buf or b"")


@given(bios_with_ctx(), st.data())
def test_slice_advances_the_dun_to_its_start(bio: Bio, data: st.DataObject) -> None:
    assert bio.crypt_ctx is not None
    dus = bio.crypt_ctx.key.data_unit_size
    units = bio.length // dus
    start = data.draw(st.integers(0, units - 1))
    length = data.draw(st.integers(1, units - start))
    part = bio.slice(start * dus, length * dus)
    assert part.crypt_ctx is not None
    assert part.crypt_ctx.dun == dun_advance(bio.crypt_ctx.dun, start)
    assert part.length == length * dus and part.offset == bio.offset + start * dus


@given(bios_with_ctx(), st.integers(0, 1 << 40))
def test_remap_keeps_the_dun(bio: Bio, sector: int) -> None:
    moved = bio.remap(sector * 512)
    assert moved.crypt_ctx == bio.crypt_ctx and moved.offset == sector * 512


@given(bios_with_ctx(), st.data())
def test_split_halves_are_contiguous_unless_the_dun_wraps(bio: Bio, data: st.DataObject) -> None:
    ctx = bio.crypt_ctx
    assert ctx is not None
    dus = ctx.key.data_unit_size
    at = data.draw(st.integers(1, bio.length // dus - 1)) * dus
    head, tail = bio.split(at)
    assert head.crypt_ctx is not None and tail.crypt_ctx is not None
    wraps = ctx.dun_int + at // dus >= 1 << DUN_BITS
    assert head.crypt_ctx.is_contiguous_with(head.length, tail.crypt_ctx) == (not wraps)


@given(bios_with_ctx(), keys)
def test_contexts_with_different_keys_never_merge(bio: Bio, other_key: BlkCryptoKey) -> None:
    ctx = bio.crypt_ctx
    assert ctx is not None
    if other_key == ctx.key:
        return
    nxt = BioCryptContext.of_limbs(other_key, ctx.advanced(bio.length).dun)
    assert not ctx.is_contiguous_with(bio.length, nxt)


def test_equal_keys_made_separately_merge() -> None:
    a, b = make_key(9, dus=512, dun_bytes=16), make_key(9, dus=512, dun_bytes=16)
    assert a is not b
    assert BioCryptContext.at(a, 0).is_contiguous_with(512, BioCryptContext.at(b, 1))


def test_a_dun_that_wraps_is_not_contiguous() -> None:
    key = KEYS[1]
    last = BioCryptContext.at(key, (1 << DUN_BITS) - 1)
    assert not last.is_contiguous_with(512, BioCryptContext.at(key, 0))


def test_a_gap_or_overlap_is_not_contiguous() -> None:
    ctx = BioCryptContext.at(KEYS[1], 100)
    assert ctx.is_contiguous_with(1024, BioCryptContext.at(KEYS[1], 102))
    assert not ctx.is_contiguous_with(1024, BioCryptContext.at(KEYS[1], 103))
    assert not ctx.is_contiguous_with(1024, BioCryptContext.at(KEYS[1], 101))


def test_splitting_inside_a_data_unit_is_einval() -> None:
    bio = Bio.write(0, bytes(8192), BioCryptContext.at(KEYS[2], 0))
    with pytest.raises(FuseblkError) as err:
        bio.split(512)
    assert err.value.errno == errno.EINVAL


@pytest.mark.parametrize(("offset", "length"), [(0, 100), (512, 4096), (4096, 4096 + 512)])
def test_misaligned_segment_is_einval(offset: int, length: int) -> None:
    with pytest.raises(FuseblkError) as err:
        BioCryptContext.at(KEYS[2], 0).check_aligned(offset, length)
    assert err.value.errno == errno.EINVAL and KEYS[2].key_id in str(err.value)


def test_aligned_segment_passes() -> None:
    BioCryptContext.at(KEYS[2], 0).check_aligned(8192, 4096)
