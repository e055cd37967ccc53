"""Tables: dmsetup syntax in, targets out; malformed tables refused whole, naming line and field."""

from __future__ import annotations

import errno

import pytest
from dm_helpers import DeviceEnv, MemDisk, MiB, manager_over
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuseblk.dm.table import Table
from fuseblk.errors import FuseblkError, TableError

ENV = DeviceEnv({name: MemDisk(name, MiB) for name in "abc"}, "dm-test")


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
    disk = MemDisk("a", MiB)
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
