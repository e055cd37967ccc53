"""Capability laws (intersect, has_capabilities, supports) and key validation (properties)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuseblk.capabilities import (
    ALL_DATA_UNIT_SIZES,
    CryptoCapabilities,
    dus_list,
    has_capabilities,
    intersect,
)
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, CryptoConfig, KeyType
from fuseblk.modes import CryptoMode

SIZES = dus_list(ALL_DATA_UNIT_SIZES)  # 16 .. 65536
KEY_TYPES = [KeyType(0), KeyType.RAW, KeyType.HW_WRAPPED, KeyType.RAW | KeyType.HW_WRAPPED]

dus_masks = st.sets(st.sampled_from(SIZES), max_size=4).map(sum)
capabilities = st.builds(
    CryptoCapabilities,
    st.dictionaries(st.sampled_from(list(CryptoMode)), dus_masks),
    st.integers(0, 32),
    st.sampled_from(KEY_TYPES),
)
configs = st.builds(
    CryptoConfig,
    st.sampled_from(list(CryptoMode)),
    st.sampled_from(SIZES),
    st.integers(1, 32),
    st.sampled_from([KeyType.RAW, KeyType.HW_WRAPPED]),
)


@given(capabilities, capabilities)
def test_intersect_is_commutative(a: CryptoCapabilities, b: CryptoCapabilities) -> None:
    assert intersect(a, b) == intersect(b, a)


@given(capabilities, capabilities, capabilities)
def test_intersect_is_associative(
    a: CryptoCapabilities, b: CryptoCapabilities, c: CryptoCapabilities
) -> None:
    assert intersect(intersect(a, b), c) == intersect(a, intersect(b, c))


@given(capabilities)
def test_intersect_is_idempotent(a: CryptoCapabilities) -> None:
    assert intersect(a, a) == a


@given(capabilities)
def test_everything_is_the_identity_of_intersect(a: CryptoCapabilities) -> None:
    assert intersect(CryptoCapabilities.everything(), a) == a


@given(capabilities)
def test_a_missing_child_leaves_nothing(a: CryptoCapabilities) -> None:
    assert intersect(a, None) == CryptoCapabilities.nothing()
    assert intersect(a, None).is_empty


@given(capabilities, capabilities)
def test_intersection_is_contained_in_both(a: CryptoCapabilities, b: CryptoCapabilities) -> None:
    both = intersect(a, b)
    assert has_capabilities(a, both) and has_capabilities(b, both)


@given(capabilities, capabilities, configs)
def test_intersection_supports_exactly_what_both_support(
    a: CryptoCapabilities, b: CryptoCapabilities, config: CryptoConfig
) -> None:
    assert intersect(a, b).supports(config) == (a.supports(config) and b.supports(config))


@given(capabilities)
def test_has_capabilities_is_reflexive(a: CryptoCapabilities) -> None:
    assert has_capabilities(a, a)


@given(capabilities, capabilities, capabilities)
def test_has_capabilities_is_transitive(
    a: CryptoCapabilities, x: CryptoCapabilities, y: CryptoCapabilities
) -> None:
    b = intersect(a, x)  # a ⊇ b
    c = intersect(b, y)  # b ⊇ c
    assert has_capabilities(a, b) and has_capabilities(b, c)
    assert has_capabilities(a, c)


@given(capabilities, capabilities, configs)
def test_a_superset_supports_everything_the_subset_does(
    new: CryptoCapabilities, old: CryptoCapabilities, config: CryptoConfig
) -> None:
    if has_capabilities(new, old) and old.supports(config):
        assert new.supports(config)


@given(capabilities, capabilities)
def test_mutual_superset_means_equal(a: CryptoCapabilities, b: CryptoCapabilities) -> None:
    if has_capabilities(a, b) and has_capabilities(b, a) and not (a.is_empty or b.is_empty):
        assert a.modes == b.modes and a.max_dun_bytes == b.max_dun_bytes


def test_narrower_dun_or_missing_size_is_not_a_superset() -> None:
    old = CryptoCapabilities({CryptoMode.AES_256_XTS: 512 | 4096}, 8, KeyType.RAW)
    assert not has_capabilities(
        CryptoCapabilities({CryptoMode.AES_256_XTS: 4096}, 8, KeyType.RAW), old
    )
    assert not has_capabilities(
        CryptoCapabilities({CryptoMode.AES_256_XTS: 512 | 4096}, 4, KeyType.RAW), old
    )
    assert not has_capabilities(CryptoCapabilities.nothing(), old)
    assert has_capabilities(CryptoCapabilities.nothing(), CryptoCapabilities.nothing())


# Keys: the kernel's EINVAL cases (blk_crypto_init_key).


@st.composite
def key_parameters(draw: st.DrawFn) -> tuple[CryptoMode, int, int, int]:
    """Mostly-valid parameters with one or two fields off, so every rule gets exercised."""
    mode = draw(st.sampled_from(list(CryptoMode)))
    raw_len = draw(st.one_of(st.just(mode.key_size), st.integers(0, 80)))
    dus = draw(
        st.one_of(st.sampled_from(SIZES), st.integers(-1, 1 << 17), st.sampled_from([8, 1 << 17]))
    )
    dun_bytes = draw(st.one_of(st.integers(0, mode.iv_size + 1), st.integers(-1, 40)))
    return mode, raw_len, dus, dun_bytes


@given(key_parameters())
def test_a_key_is_valid_exactly_when_the_kernel_accepts_it(
    params: tuple[CryptoMode, int, int, int],
) -> None:
    mode, raw_len, dus, dun_bytes = params
    valid = (
        raw_len == mode.key_size
        and 1 <= dun_bytes <= mode.iv_size
        and dus > 0
        and dus & (dus - 1) == 0
        and 16 <= dus <= 65536
    )
    raw = bytes(range(raw_len))
    try:
        key = BlkCryptoKey.create(mode, raw, dus, dun_bytes)
    except FuseblkError as err:
        assert not valid and err.errno == errno.EINVAL
        if raw_len >= 4:
            assert raw.hex() not in str(err)
    else:
        assert valid and key.config == CryptoConfig(mode, dus, dun_bytes, KeyType.RAW)


def test_unknown_mode_is_einval() -> None:
    with pytest.raises(FuseblkError) as err:
        BlkCryptoKey.create("aes-512-rot13", bytes(64), 4096)
    assert err.value.errno == errno.EINVAL


@pytest.mark.parametrize("dus", [0, 3, 1000, 4097])
def test_data_unit_size_must_be_a_power_of_two(dus: int) -> None:
    with pytest.raises(FuseblkError) as err:
        BlkCryptoKey.create(CryptoMode.AES_256_XTS, bytes(64), dus)
    assert err.value.errno == errno.EINVAL


def test_dun_bytes_of_zero_is_einval() -> None:
    with pytest.raises(FuseblkError) as err:
        BlkCryptoKey.create(CryptoMode.AES_256_XTS, bytes(64), 4096, dun_bytes=0)
    assert err.value.errno == errno.EINVAL


def test_dun_bytes_defaults_to_the_iv_size() -> None:
    for mode in CryptoMode:
        assert BlkCryptoKey.create(mode, bytes(mode.key_size), 4096).dun_bytes == mode.iv_size


def test_mode_names_parse_case_insensitively() -> None:
    assert BlkCryptoKey.create("aes-256-xts", bytes(64), 512).mode is CryptoMode.AES_256_XTS
    assert BlkCryptoKey.create("ADIANTUM", bytes(32), 512).mode is CryptoMode.ADIANTUM


def test_key_repr_names_the_key_by_identifier_only() -> None:
    raw = bytes(range(64))
    key = BlkCryptoKey.create(CryptoMode.AES_256_XTS, raw, 4096)
    text = repr(key) + str(key) + repr(key.config)
    assert raw.hex() not in text and repr(raw) not in text and key.key_id in repr(key)
