"""The DM core over real backends (image files as emulated inline-encryption hardware)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from device_helpers import XTS, MiB, caps, ciphertext, make_key
from dm_helpers import image_manager, make_image, pattern, read, write

from fuseblk.bio import Bio
from fuseblk.blkcrypto.fallback import CryptoFallback
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.manager import DeviceManager
from fuseblk.errors import FuseblkError

SZ = 2 * MiB // 512


async def raw(dm: DeviceManager, backend: str, offset: int, length: int) -> bytes:
    """Read a backend directly, below every mapping and without any context: what is stored."""
    buf = bytearray(length)
    await dm.backends()[backend].submit(Bio.read(offset, buf))
    return bytes(buf)


async def test_tables_reference_backends_by_name_and_images_by_path(tmp_path: Path):
    legacy = await make_image(tmp_path, "legacy", 2 * MiB, "none")
    async with image_manager(tmp_path, {"inline": (2 * MiB, "ufs")}) as dm:
        md = await dm.create("d", f"0 {SZ} linear inline 0\n{SZ} {SZ} linear {legacy} 0")
        assert md.size == 4 * MiB
        assert dm.table("d") == f"0 {SZ} linear inline 0\n{SZ} {SZ} linear {legacy.resolve()} 0\n"
        await dm.load("d", dm.table("d"))  # the printed table loads again: same devices
        await dm.resume("d")
        assert set(dm.backends()) == {"inline", str(legacy.resolve())}
        await write(md, SZ * 512, pattern(4096))
        assert await raw(dm, str(legacy.resolve()), 0, 4096) == pattern(4096)


async def test_missing_image_is_a_table_error(manager: DeviceManager, tmp_path: Path):
    with pytest.raises(FuseblkError) as info:
        await manager.create("d", f"0 8 linear {tmp_path}/nope.img 0")
    assert info.value.errno == errno.ENOENT and "line 1" in info.value.message


async def test_unattachable_image_error_names_the_path_once(manager: DeviceManager, tmp_path: Path):
    img = await make_image(tmp_path, "img", MiB, "none")
    with open(img, "r+b") as f:  # both header copies destroyed
        for copy in (0, 512 * 1024):
            f.seek(copy + 64)
            f.write(b"\xa5" * 256)
    with pytest.raises(FuseblkError) as info:
        await manager.create("d", f"0 8 linear {img} 0")
    assert info.value.errno == errno.EINVAL and "no valid header" in info.value.message
    assert info.value.message.count(str(img)) == 1


async def test_images_opened_for_a_refused_table_are_detached_again(
    manager: DeviceManager, tmp_path: Path
):
    img = await make_image(tmp_path, "img", MiB, "none")
    with pytest.raises(FuseblkError):
        await manager.create("d", f"0 8 linear {img} 0\n8 8 linear {img} nope")
    assert manager.backends() == {}
    manager.add_backend("img", img)  # the image lock was released


async def test_capabilities_intersect_across_hardware_profiles(tmp_path: Path):
    async with image_manager(tmp_path, {"ufs": (2 * MiB, "ufs"), "emmc": (2 * MiB, "emmc")}) as dm:
        await dm.create("lower", f"0 {SZ} striped 2 8 ufs 0 emmc 0")
        await dm.create("upper", f"0 {SZ} linear lower 0")
        assert dm.info("upper")["crypto"] == caps({XTS: (512, 4096)}, 4).to_json()


async def test_striped_over_backends_stores_chunks_on_each_leg(tmp_path: Path):
    async with image_manager(tmp_path, {"a": (MiB, "none"), "b": (MiB, "none")}) as dm:
        md = await dm.create("d", "0 2048 striped 2 16 a 0 b 0")
        data = pattern(64 * 1024)
        await write(md, 0, data)
        for i in range(8):
            leg = "ab"[i % 2]
            assert await raw(dm, leg, (i // 2) * 8192, 8192) == data[i * 8192 : (i + 1) * 8192]


async def test_xfstests_flakey_and_delay_tables(tmp_path: Path):
    async with image_manager(tmp_path, {"dev": (2 * MiB, "none")}) as dm:
        md = await dm.create("f", f"0 {SZ} flakey dev 0 180 0")
        await write(md, 0, pattern(4096, 1))
        await dm.load("f", f"0 {SZ} flakey dev 0 0 180 1 drop_writes")
        await dm.resume("f")
        await write(md, 0, pattern(4096, 2))
        assert await read(md, 0, 4096) == pattern(4096, 1)  # dropped, and reads still work
        await dm.load("f", f"0 {SZ} delay dev 0 0")
        await dm.resume("f")
        await write(md, 0, pattern(4096, 3))
        assert await raw(dm, "dev", 0, 4096) == pattern(4096, 3)


async def test_error_table_swap_over_a_plain_disk_and_refusal_over_inline_hardware(tmp_path: Path):
    async with image_manager(tmp_path, {"plain": (MiB, "none"), "inline": (MiB, "ufs")}) as dm:
        md = await dm.create("p", "0 2048 linear plain 0")
        await dm.load("p", "0 2048 error")
        await dm.resume("p")
        with pytest.raises(FuseblkError) as info:
            await read(md, 0, 4096)
        assert info.value.errno == errno.EIO
        # Over inline-encryption hardware the kernel refuses the error table: it offers less.
        await dm.create("i", "0 2048 linear inline 0")
        with pytest.raises(FuseblkError) as info:
            await dm.load("i", "0 2048 error")
        assert info.value.errno == errno.EINVAL and dm.info("i")["tables"] == ["LIVE"]


async def mixed(tmp_path: Path, policy: str) -> tuple[bytes, bytes, dict, dict, CryptoFallback]:
    sub = tmp_path / policy
    sub.mkdir()
    async with image_manager(sub, {"inline": (MiB, "ufs"), "legacy": (MiB, "none")}) as dm:
        fb = dm.block_layer.fallback
        md = await dm.create(
            "d", "0 2048 linear inline 0\n2048 2048 linear legacy 0", fallback=policy
        )
        key = make_key(9, dus=4096)
        data = pattern(2 * MiB, 9)
        for off in range(0, 2 * MiB, 256 * 1024):  # none of these crosses the target boundary
            await write(
                md,
                off + 4096,
                data[off : off + 256 * 1024 - 8192],
                BioCryptContext.at(key, off // 4096 + 1),
            )
        for off in range(0, 2 * MiB, 256 * 1024):
            got = await read(
                md, off + 4096, 256 * 1024 - 8192, BioCryptContext.at(key, off // 4096 + 1)
            )
            assert got == data[off : off + 256 * 1024 - 8192]
        await write(md, MiB - 8192, data[:16384], BioCryptContext.at(key, 5000))  # this one does
        stats = dm.stats()
        return (
            await raw(dm, "inline", 0, MiB),
            await raw(dm, "legacy", 0, MiB),
            stats,
            md.counters.snapshot(),
            fb,
        )


async def test_fallback_at_device_and_per_target_store_byte_identical_data(tmp_path: Path):
    d_inline, d_legacy, d_stats, d_md, d_fb = await mixed(tmp_path, "device")
    t_inline, t_legacy, t_stats, t_md, t_fb = await mixed(tmp_path, "target")
    assert d_inline == t_inline and d_legacy == t_legacy
    key = make_key(9, dus=4096)
    assert t_inline[4096:8192] == ciphertext(key, pattern(2 * MiB, 9)[:4096], 1)
    # fallback=device: the inline hardware never saw a key; everything went through the fallback
    assert d_stats["backends"]["inline"]["profile"].get("programs", 0) == 0
    assert d_md["fallback_bios"] == 17 and d_fb.counters["bytes"] == d_md["fallback_bytes"]
    # fallback=target: the inline half was encrypted by the hardware, the legacy half in software
    assert t_stats["backends"]["inline"]["profile"]["programs"] == 1
    assert t_md.get("fallback_bios", 0) == 0 and t_md["passthrough_bios"] == 18
    assert t_fb.counters["bytes"] == d_fb.counters["bytes"] // 2


async def test_images_opened_by_path_are_detached_when_no_table_uses_them(
    manager: DeviceManager, tmp_path: Path
):
    # dm_put_device: removing the last device over an image releases it (and its lock) at once,
    # not at unmount
    img = await make_image(tmp_path, "img", MiB, "none")
    other = await make_image(tmp_path, "other", MiB, "none")
    await manager.create("a", f"0 8 linear {img} 0")
    await manager.create("b", f"0 8 linear {img} 8")
    await manager.remove("a")
    assert str(img.resolve()) in manager.backends()  # b still uses it
    await manager.load("b", f"0 8 linear {other} 0")
    await manager.resume("b")  # the old live table was the last user
    assert set(manager.backends()) == {str(other.resolve())}
    manager.add_backend("img", img)  # the image lock was released
    await manager.remove("b")
    assert set(manager.backends()) == {"img"}  # attached by name: the caller's to detach


async def test_images_opened_by_a_refused_load_are_detached(manager: DeviceManager, tmp_path: Path):
    # the table is built (its images opened) before the capability check refuses it
    inline = await make_image(tmp_path, "inline", MiB, "ufs")
    plain = await make_image(tmp_path, "plain", MiB, "none")
    await manager.create("vol", f"0 8 linear {inline} 0")
    with pytest.raises(FuseblkError) as info:
        await manager.load("vol", f"0 8 linear {plain} 0")
    assert info.value.errno == errno.EINVAL
    assert set(manager.backends()) == {str(inline.resolve())}
    manager.add_backend("plain", plain)  # its image lock was released too
