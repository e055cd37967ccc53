"""Tables: dmsetup syntax in, targets out; malformed tables refused whole, naming line and field."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from device_helpers import MemDevice, MiB
from dm_helpers import DeviceEnv, manager_over
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuseblk.dm.table import Table
from fuseblk.dm.targets.registry import target_names
from fuseblk.errors import FuseblkError, TableError

ENV = DeviceEnv({name: MemDevice(name, MiB) for name in "abc"}, "dm-test")


async def test_parse_ignores_comments_and_blank_lines_and_formats_dmsetup_text():
    text = "# a comment\n\n0 100 linear a 0   # trailing\n100 28 zero\n"
    table = await Table.parse(text, ENV)
    assert table.format() == "0 100 linear a 0\n100 28 zero\n"
    assert table.size == 128 * 512


async def test_empty_text_is_an_empty_table():
    table = await Table.parse("# nothing\n\n", ENV)
    assert table.is_empty and table.size == 0 and table.format() == ""


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("0 8 linear a 0\n8 8", 2, "target"),
        ("0 8 linear a 0\nx 8 zero", 2, "start"),
        ("\u00b2 8 zero", 1, "start"),  # a digit to str.isdigit(), not to int()
        ("0 8 linear a 0\n16 8 zero", 2, "start"),  # gap
        ("0 8 linear a 0\n4 8 zero", 2, "start"),  # overlap
        ("8 8 zero", 1, "start"),  # does not start at 0
        ("0 0 zero", 1, "length"),
        ("0 -8 zero", 1, "length"),
        ("0 \u00b2 zero", 1, "length"),
        ("0 8 zero\n8 8 frobnicate 1", 2, "target"),
        ("0 8 linear a", 1, "linear arguments"),
        ("0 8 linear a x", 1, "linear offset"),
        ("0 8 linear nosuch 0", 1, "linear device"),
        ("0 8 linear a 2047", 1, "linear device"),  # area beyond the end of a (2048 sectors)
        ("0 8 zero extra", 1, "zero arguments"),
        ("#c\n0 16 striped 2 0 a 0 b 0", 2, "striped chunk_sectors"),
        ("0 16 striped 0 8", 1, "striped #stripes"),
        ("0 15 striped 2 1 a 0 b 0", 1, "striped length"),
        ("0 16 striped 2 16 a 0 b 0", 1, "striped length"),
        ("0 16 striped 2 8 a 0", 1, "striped arguments"),
        ("0 8 flakey a 0 0 0", 1, "flakey down interval"),
        ("0 8 flakey a 0 1 1 1 bogus", 1, "flakey feature"),
        ("0 8 flakey a 0 1 1 2 drop_writes error_writes", 1, "flakey feature error_writes"),
        ("0 8 flakey a 0 1 1 2 drop_writes", 1, "flakey #features"),
        ("0 8 flakey a 0 1 1 5 corrupt_bio_byte 1 x 0 0", 1, "flakey corrupt_bio_byte direction"),
        ("0 8 flakey a 0 1 1 5 corrupt_bio_byte 1 r 256 0", 1, "flakey corrupt_bio_byte value"),
        (
            "0 8 flakey a 0 1 1 6 drop_writes corrupt_bio_byte 1 w 0 0",
            1,
            "flakey feature drop_writes",
        ),
        (
            "0 8 flakey a 0 1 1 2 random_read_corrupt 1000000001",
            1,
            "flakey random_read_corrupt probability",
        ),
        ("0 8 delay a 0", 1, "delay arguments"),
        ("0 8 delay a 0 x", 1, "delay read delay"),
    ],
)
async def test_malformed_table_names_line_and_field(text: str, line: int, field: str):
    with pytest.raises(TableError) as info:
        await Table.parse(text, ENV)
    assert info.value.errno == errno.EINVAL
    assert info.value.line == line
    assert info.value.field == field
    assert f"line {line}" in str(info.value)


async def test_unknown_target_lists_known_targets():
    with pytest.raises(TableError) as info:
        await Table.parse("0 8 frobnicate", ENV)
    for known in ("linear", "striped", "zero", "error", "flakey", "delay"):
        assert known in info.value.message


async def test_malformed_table_destroys_targets_already_built():
    destroyed = []
    from fuseblk.dm.targets.delay import DelayTarget

    original = DelayTarget.destroy

    async def spy(self: DelayTarget) -> None:
        destroyed.append(self)
        await original(self)

    DelayTarget.destroy = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(TableError):
            await Table.parse("0 8 delay a 0 0\n8 8 delay a 0 0\n16 8 linear a", ENV)
    finally:
        DelayTarget.destroy = original  # type: ignore[method-assign]
    assert len(destroyed) == 2


async def test_malformed_load_leaves_live_table_untouched():
    disk = MemDevice("a", MiB)
    dm = manager_over(disk)
    await dm.create("d", "0 2048 linear a 0")
    with pytest.raises(TableError):
        await dm.load("d", "0 1024 linear a 0\n1024 1024 linear a nope")
    assert dm.table("d") == "0 2048 linear a 0\n"
    assert dm.info("d")["tables"] == ["LIVE"]


# -- round trip ---------------------------------------------------------------------------------

DEVS = st.sampled_from(["a", "b", "c"])


@st.composite
def linear_line(draw: st.DrawFn, length: int) -> str:
    return f"linear {draw(DEVS)} {draw(st.integers(0, 2048 - length))}"


@st.composite
def striped_line(draw: st.DrawFn, length: int) -> str:
    n = draw(st.integers(1, 3))
    chunk = draw(st.sampled_from([1, 3, 8]))
    # length is chosen by the caller as a multiple of 144, divisible by every n * chunk here.
    legs = " ".join(f"{draw(DEVS)} {draw(st.integers(0, 2048 - length // n))}" for _ in range(n))
    return f"striped {n} {chunk} {legs}"


@st.composite
def flakey_line(draw: st.DrawFn, length: int) -> str:
    up, down = draw(st.integers(0, 100)), draw(st.integers(1, 100))
    features = draw(
        st.sampled_from(
            [
                "",
                "0",
                "1 drop_writes",
                "1 error_writes",
                "1 error_reads",
                "2 error_reads drop_writes",
                "5 corrupt_bio_byte 7 r 9 0",
                "6 drop_writes corrupt_bio_byte 1 r 255 0",
                "2 random_read_corrupt 5",
                "4 random_write_corrupt 1000000000 random_read_corrupt 0",
            ]
        )
    )
    return f"flakey {draw(DEVS)} {draw(st.integers(0, 2048 - length))} {up} {down} {features}"


@st.composite
def table_text(draw: st.DrawFn) -> str:
    lines, start = [], 0
    for _ in range(draw(st.integers(1, 5))):
        length = 144 * draw(st.integers(1, 10))
        kind = draw(st.sampled_from([linear_line, striped_line, flakey_line]))
        lines.append(f"{start} {length} {draw(kind(length))}")
        start += length
    return "\n".join(lines)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table_text())
async def test_parse_of_format_is_the_same_table(text: str):
    table = await Table.parse(text, ENV)
    again = await Table.parse(table.format(), ENV)
    assert again == table
    assert again.format() == table.format()


async def test_tables_differing_in_arguments_are_not_equal():
    one = await Table.parse("0 8 linear a 0", ENV)
    assert one != await Table.parse("0 8 linear a 8", ENV)
    assert one != await Table.parse("0 8 linear b 0", ENV)
    assert one == await Table.parse("0   8 linear a   0 # same", ENV)


async def test_target_at_sector_outside_table_is_einval():
    table = await Table.parse("0 8 zero", ENV)
    assert table.target_at_sector(7).name == "zero"
    with pytest.raises(FuseblkError) as info:
        table.target_at_sector(8)
    assert info.value.errno == errno.EINVAL


KEY_HEX = "0123456789abcdef" * 8  # 64 bytes: an AES-256-XTS key


@pytest.mark.parametrize(
    "text",
    [
        f"0 8 default-key {KEY_HEX} aes-xts-plain64 0 a 0",  # key and cipher swapped
        f"0 8 crypt aes-xts-plain64 {KEY_HEX} 0 a 0 1 {KEY_HEX}",  # key pasted as an option
        f"0 8 default-key aes-xts-plain64 {KEY_HEX} 0 a 0 1 {KEY_HEX}",
        f"0 8 linear {KEY_HEX} 0",  # key pasted as the device
        f"0 8 {KEY_HEX}",  # key pasted as the target
        f"{KEY_HEX[:32]}",  # half a key on a line of its own
    ],
)
async def test_errors_about_misplaced_keys_do_not_quote_them(text: str):
    with pytest.raises(TableError) as info:
        await Table.parse(text, ENV)
    assert KEY_HEX[:32] not in info.value.message and KEY_HEX[32:64] not in info.value.message
    assert KEY_HEX[:32] not in str(info.value) and KEY_HEX[:32] not in info.value.field
    assert "hex digits" in info.value.message


@pytest.mark.parametrize(
    ("text", "what"), [("0 8 zero\n16 8 zero", "a gap"), ("0 8 zero\n4 8 zero", "an overlap")]
)
async def test_misplaced_start_says_whether_it_is_a_gap_or_an_overlap(text: str, what: str):
    with pytest.raises(TableError) as info:
        await Table.parse(text, ENV)
    assert f"this is {what})" in info.value.message


# -- bounds: a device is a file in the mount; dm reads sector numbers and counts as u64 ---------

MAX_SECTORS = ((1 << 63) - 1) // 512  # the last whole sector of the largest file


async def test_the_largest_table_is_the_largest_file_in_whole_sectors():
    table = await Table.parse(f"0 {MAX_SECTORS - 8} zero\n{MAX_SECTORS - 8} 8 error", ENV)
    assert table.size == MAX_SECTORS * 512 <= (1 << 63) - 1
    assert table.format() == f"0 {MAX_SECTORS - 8} zero\n{MAX_SECTORS - 8} 8 error\n"


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (f"0 {MAX_SECTORS + 1} zero", 1, "length"),  # 2^63 bytes: one byte past a file's size
        (f"0 {1 << 64} zero", 1, "length"),  # not even a u64
        (f"0 {(1 << 64) - 1} zero", 1, "length"),
        (f"0 {MAX_SECTORS} zero\n{MAX_SECTORS} 1 zero", 2, "length"),  # the total counts
        (f"0 8 zero\n{1 << 64} 8 zero", 2, "start"),
        (f"0 8 linear a {1 << 64}", 1, "linear offset"),
        (f"0 8 linear a {(1 << 64) - 1}", 1, "linear device"),  # offset + length past the end
        (f"0 16 striped 2 8 a 0 b {(1 << 64) - 1}", 1, "striped stripe 1 device"),
        (f"0 8 raid1 1 a {(1 << 64) - 4}", 1, "raid1 leg 0 offset"),
        (f"0 8 delay a 0 0 b {(1 << 64) - 1} 0", 1, "delay write device"),
        (f"0 8 crypt aes-xts-plain64 {'00' * 64} {(1 << 64) - 7} a 0", 1, "crypt iv_offset"),
        (
            f"0 8 default-key aes-xts-plain64 {'00' * 64} {(1 << 64) - 7} a 0",
            1,
            "default-key iv_offset",
        ),
        (f"0 {257 * 8} striped 257 8 " + "a 0 " * 257, 1, "striped #stripes"),
        (f"0 8 striped 1 {1 << 32} a 0", 1, "striped chunk_sectors"),
        ("0 8 raid1 33 " + "a 0 " * 33, 1, "raid1 #legs"),
        (f"0 8 flakey a 0 {1 << 32} 1", 1, "flakey up interval"),
        (f"0 8 flakey a 0 {(1 << 32) - 1} 1", 1, "flakey down interval"),  # up + down overflows
        ("0 8 flakey a 0 1 1 12 " + "error_reads " * 12, 1, "flakey #features"),
        (f"0 8 delay a 0 {1 << 32}", 1, "delay read delay"),
        (
            f"0 8 crypt aes-xts-plain64 {'00' * 64} 0 a 0 7 " + "allow_discards " * 7,
            1,
            "crypt #opt_params",
        ),
        # %hu in the kernel keeps the low 16 bits: 66048 would be read as 512
        (
            f"0 8 crypt aes-xts-plain64 {'00' * 64} 0 a 0 1 sector_size:66048",
            1,
            "crypt option 'sector_size:66048'",
        ),
        (
            f"0 8 default-key aes-xts-plain64 {'00' * 64} 0 a 0 2 sector_size:8192 iv_large_sectors",
            1,
            "default-key option 'sector_size:8192'",
        ),
    ],
)
async def test_numbers_out_of_range_are_refused_naming_line_and_field(
    text: str, line: int, field: str
):
    with pytest.raises(TableError) as info:
        await Table.parse(text, ENV)
    assert (info.value.errno, info.value.line, info.value.field) == (errno.EINVAL, line, field)


async def test_an_oversized_table_is_refused_by_the_manager_and_the_live_one_kept():
    dm = manager_over(MemDevice("a", MiB))
    await dm.create("d", "0 8 zero")
    with pytest.raises(TableError) as info:
        await dm.load("d", f"0 {MAX_SECTORS + 1} zero")
    assert info.value.field == "length"
    with pytest.raises(TableError):
        await dm.create("e", "0 18014398509481984 zero")
    assert dm.names() == ["d"] and dm.table("d") == "0 8 zero\n"
    await dm.close()


# -- every number is ASCII decimal digits, read by one helper -----------------------------------

KEY = "00" * 64
# (line with {n} where a number goes, the field it is, a number the line accepts there)
NUMBER_FIELDS = [
    ("{n} 8 zero", "start", "0"),
    ("0 {n} zero", "length", "8"),
    ("0 8 linear a {n}", "linear offset", "8"),
    ("0 16 striped {n} 8 a 0 b 0", "striped #stripes", "2"),
    ("0 16 striped 2 {n} a 0 b 0", "striped chunk_sectors", "8"),
    ("0 16 striped 2 8 a {n} b 0", "striped stripe 0 offset", "8"),
    ("0 8 flakey a {n} 1 1", "flakey offset", "8"),
    ("0 8 flakey a 0 {n} 1", "flakey up interval", "8"),
    ("0 8 flakey a 0 1 {n}", "flakey down interval", "8"),
    ("0 8 flakey a 0 1 1 {n} error_reads", "flakey #features", "1"),
    ("0 8 flakey a 0 1 1 5 corrupt_bio_byte {n} r 0 0", "flakey corrupt_bio_byte Nth_byte", "8"),
    ("0 8 flakey a 0 1 1 5 corrupt_bio_byte 1 r {n} 0", "flakey corrupt_bio_byte value", "8"),
    ("0 8 flakey a 0 1 1 5 corrupt_bio_byte 1 r 0 {n}", "flakey corrupt_bio_byte flags", "8"),
    (
        "0 8 flakey a 0 1 1 2 random_read_corrupt {n}",
        "flakey random_read_corrupt probability",
        "8",
    ),
    ("0 8 delay a {n} 0", "delay read offset", "8"),
    ("0 8 delay a 0 {n}", "delay read delay", "8"),
    ("0 8 delay a 0 0 b {n} 0", "delay write offset", "8"),
    ("0 8 delay a 0 0 b 0 {n}", "delay write delay", "8"),
    ("0 8 delay a 0 0 b 0 0 c {n} 0", "delay flush offset", "8"),
    ("0 8 delay a 0 0 b 0 0 c 0 {n}", "delay flush delay", "8"),
    ("0 8 raid1 {n} a 0", "raid1 #legs", "1"),
    ("0 8 raid1 1 a {n}", "raid1 leg 0 offset", "8"),
    ("0 8 raid1 1 a 0 {n} nosync", "raid1 #features", "1"),
    (f"0 8 crypt aes-xts-plain64 {KEY} {{n}} a 0", "crypt iv_offset", "8"),
    (f"0 8 crypt aes-xts-plain64 {KEY} 0 a {{n}}", "crypt offset", "8"),
    (f"0 8 crypt aes-xts-plain64 {KEY} 0 a 0 {{n}} allow_discards", "crypt #opt_params", "1"),
    (
        f"0 8 crypt aes-xts-plain64 {KEY} 0 a 0 1 sector_size:{{n}}",
        "crypt option 'sector_size:",
        "4096",
    ),
    (f"0 8 default-key aes-xts-plain64 {KEY} {{n}} a 0", "default-key iv_offset", "8"),
    (f"0 8 default-key aes-xts-plain64 {KEY} 0 a {{n}}", "default-key offset", "8"),
    (
        f"0 8 default-key aes-xts-plain64 {KEY} 0 a 0 {{n}} allow_discards",
        "default-key #opt_params",
        "1",
    ),
    (
        f"0 8 default-key aes-xts-plain64 {KEY} 0 a 0 2 sector_size:{{n}} iv_large_sectors",
        "default-key option 'sector_size:",
        "4096",
    ),
]
NOT_ASCII_NUMBERS = {
    "arabic-indic": "\u0668",  # int() reads it as 8
    "fullwidth": "\uff18",  # int() reads it as 8
    "superscript": "\u00b2",  # str.isdigit(), yet int() refuses it
    "past int's digit limit": "0" * 4000 + "8" * 400,
    "signed": "+8",
}


@pytest.mark.parametrize(("template", "field", "good"), NUMBER_FIELDS)
@pytest.mark.parametrize("bad", NOT_ASCII_NUMBERS.values(), ids=NOT_ASCII_NUMBERS.keys())
async def test_every_number_in_a_table_is_ascii_decimal(
    template: str, field: str, good: str, bad: str
):
    table = await Table.parse(template.format(n=good), ENV)  # the line is right but for {n}
    await table.destroy()
    with pytest.raises(TableError) as info:
        await Table.parse(template.format(n=bad), ENV)
    assert info.value.errno == errno.EINVAL and info.value.line == 1
    assert info.value.field.startswith(field)
    assert len(info.value.message) < 400  # a huge number is quoted by its length, as keys are


async def test_leading_zeros_are_read_as_the_kernel_reads_them():
    table = await Table.parse("0000 0008 linear a " + "0" * 30 + "16", ENV)
    assert table.format() == "0 8 linear a 16\n"


@pytest.mark.parametrize(
    "text",
    ["0 8 zero\n8 8 linear \ud800 0", "0 8 zero\n8 8 linear a\0 0", "0 8 zero\n8 8 zero # \udcff"],
)
async def test_table_text_must_be_utf8_without_nul(text: str):
    with pytest.raises(TableError) as info:
        await Table.parse(text, ENV)
    assert (info.value.line, info.value.field) == (2, "text")
    info.value.message.encode("utf-8")  # the message quotes no surrogate


# -- generated bad input ------------------------------------------------------------------------

ANY_DEV = st.sampled_from([*"abcd", "#"])
SMALL = st.integers(0, 64).map(str)
NUMBERS = st.one_of(
    SMALL,
    st.integers(0, 1 << 80).map(str),
    st.sampled_from([(1 << 64) - 1, 1 << 64, MAX_SECTORS, MAX_SECTORS + 1, 1 << 32]).map(str),
    st.integers(4300, 4400).map(lambda n: "9" * n),  # past int()'s default digit limit
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4),  # any script's digits
    st.sampled_from(["-1", "+1", "0x10", "1e3", "1_000", "\u00b2", "\uff18"]),
)
WORDS = st.sampled_from(
    [
        *target_names(),
        "-",
        KEY,
        "00" * 32,
        "aes-xts-plain64",
        "xchacha12,aes-adiantum-plain64",
        "capi:xts(aes)-plain64",
        "aes-cbc-essiv:sha256",
        "aes-xts-plain",
        "allow_discards",
        "sector_size:4096",
        "sector_size:\u0661\u0660\u0662\u0664",
        "iv_large_sectors",
        "wrappedkey_v0",
        "high_priority",
        "nosync",
        "error_reads",
        "drop_writes",
        "error_writes",
        "corrupt_bio_byte",
        "random_read_corrupt",
        "random_write_corrupt",
        "r",
        "w",
    ]
)
ODD = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=10)  # unicode, no NUL
NOT_TEXT = st.sampled_from(["\ud800", "\udcff", "\0"])  # no UTF-8 C string spells these
TOKENS = st.one_of(ANY_DEV, NUMBERS, WORDS, ODD)
NUMS = st.one_of(SMALL, SMALL, SMALL, NUMBERS)
# What each target's arguments are, roughly: generated lines get past the first argument
# often enough to reach every parser, and are wrong somewhere often enough to test refusals.
SHAPES = {
    "linear": [ANY_DEV, NUMS],
    "striped": [SMALL, SMALL, ANY_DEV, NUMS, ANY_DEV, NUMS],
    "zero": [],
    "error": [],
    "flakey": [ANY_DEV, NUMS, SMALL, SMALL, SMALL, WORDS, NUMS, WORDS, NUMS],
    "delay": [ANY_DEV, NUMS, NUMS, ANY_DEV, NUMS, NUMS, ANY_DEV, NUMS, NUMS],
    "crypt": [WORDS, WORDS, NUMS, ANY_DEV, NUMS, SMALL, WORDS, WORDS],
    "default-key": [WORDS, WORDS, NUMS, ANY_DEV, NUMS, SMALL, WORDS, WORDS],
    "raid1": [SMALL, ANY_DEV, NUMS, ANY_DEV, NUMS, SMALL, WORDS],
}


@st.composite
def generated_args(draw: st.DrawFn, name: str) -> list[str]:
    args = [
        draw(kind) if draw(st.integers(0, 9)) else draw(TOKENS) for kind in SHAPES.get(name, [])
    ]
    if draw(st.integers(0, 3)) == 0:
        args = args[: draw(st.integers(0, len(args)))]
    if draw(st.integers(0, 3)) == 0:
        args += draw(st.lists(TOKENS, max_size=2))
    return args


@st.composite
def generated_table(draw: st.DrawFn) -> str:
    """Lines that mostly start where they should (so later lines and arguments get reached)."""
    lines, start = [], 0
    for _ in range(draw(st.integers(1, 20))):
        if draw(st.integers(0, 29)) == 0:
            lines.append(" ".join(draw(st.lists(TOKENS, max_size=12))))
            continue
        first = str(start) if draw(st.integers(0, 29)) else draw(NUMBERS)
        length = draw(st.integers(1, 2048).map(str)) if draw(st.integers(0, 9)) else draw(NUMBERS)
        name = draw(st.sampled_from(target_names())) if draw(st.integers(0, 29)) else draw(TOKENS)
        lines.append(" ".join([first, length, name, *draw(generated_args(name))]))
        if length.isascii() and length.isdigit() and len(length) < 30:
            start += int(length)
    text = "\n".join(lines)
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(NOT_TEXT) + text[at:]
    return text


def check_refusal(exc: FuseblkError) -> None:
    """EINVAL with one printable line; the parser's refusals also name the line and the field."""
    assert exc.errno == errno.EINVAL
    assert exc.message.isprintable() and len(exc.message) < 1000, exc.message
    exc.message.encode("utf-8")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(generated_table(), st.text(max_size=200)))
async def test_generated_tables_parse_or_are_refused_with_a_table_error(text: str):
    try:
        table = await Table.parse(text, ENV)
    except FuseblkError as exc:
        assert isinstance(exc, TableError), exc
        check_refusal(exc)
        return
    assert table.size <= (1 << 63) - 1
    assert await Table.parse(table.format(), ENV) == table
    await table.destroy()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=generated_table())
async def test_a_refused_generated_load_leaves_the_live_table_untouched(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # device words name no file here: nothing is opened as an image
    dm = manager_over(*(MemDevice(name, MiB) for name in "abc"))
    try:
        await dm.create("d", "0 2048 linear a 0")
        try:
            await dm.load("d", text.replace("/", "_"))
        except FuseblkError as exc:  # a TableError, or the manager's: no targets at all
            check_refusal(exc)
            assert dm.table("d") == "0 2048 linear a 0\n"
            assert dm.info("d")["tables"] == ["LIVE"]
    finally:
        await dm.close()
