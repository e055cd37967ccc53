"""How the control-plane commands print: dmsetup's text formats, aligned tables, or JSON.

Kept apart from the verbs so ``dm`` and ``stats`` print the same way, and so the formats can be
tested on plain data without a daemon.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fuseblk import SECTOR_SIZE
from fuseblk.sizes import format_size

NO_DEVICES = "No devices found"


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def align(rows: Sequence[Sequence[object]]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    if not rows:
        return []
    cells = [[str(c) for c in row] for row in rows]
    ncols = max(len(r) for r in cells)
    widths = [max((len(r[i]) for r in cells if i < len(r)), default=0) for i in range(ncols)]
    numeric = [all(_is_number(r[i]) for r in cells[1:] if i < len(r)) for i in range(ncols)]
    out = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            parts.append(cell.rjust(widths[i]) if numeric[i] and i > 0 else cell.ljust(widths[i]))
        out.append("  ".join(parts).rstrip())
    return out


def _is_number(text: str) -> bool:
    return text.lstrip("-").isdigit()


# --- dmsetup table / status / ls ---------------------------------------------------------------


def per_device_lines(
    entries: Iterable[Mapping[str, Any]], field: str, *, prefix: bool
) -> list[str]:
    """``dmsetup table``/``status``: each line of ``field``, prefixed ``name: `` when listing all.

    A device without a live table prints its name alone, as dmsetup does.
    """
    out: list[str] = []
    for entry in entries:
        lines = [ln for ln in str(entry.get(field) or "").splitlines() if ln.strip()]
        if not prefix:
            out.extend(lines)
        elif not lines:
            out.append(f"{entry['name']}: ")
        else:
            out.extend(f"{entry['name']}: {ln}" for ln in lines)
    return out


def ls_lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """``dmsetup ls``, with the size where dmsetup prints major:minor (there are no numbers here)."""
    if not entries:
        return [NO_DEVICES]
    return [f"{e['name']}\t({format_size(int(e['size']))})" for e in entries]


# --- dmsetup info ------------------------------------------------------------------------------


def _describe_caps(caps: Mapping[str, Any] | None) -> str:
    """The ``crypto`` object in ``CryptoCapabilities.describe``'s words; ``none`` without modes."""
    modes = caps.get("modes") if caps else None
    if not caps or not modes:
        return "none"
    text = " ".join(f"{mode}:{','.join(str(d) for d in dus)}" for mode, dus in modes.items())
    types = ",".join(caps.get("key_types") or [])
    return f"{text} max_dun_bytes={caps['max_dun_bytes']} key_types={types}"


def info_block(info: Mapping[str, Any]) -> list[str]:
    """One device (an ``info`` result, docs/control-protocol.md) in ``dmsetup info``'s layout,
    plus size, block size and inline crypto."""
    rows = [
        ("Name", info["name"]),
        ("State", info["state"]),
        ("Tables present", " & ".join(info["tables"]) or "None"),
        ("Open count", info["open_count"]),
        ("Event number", info["event_nr"]),
        ("Number of targets", info["targets"]),
        ("Size in sectors", info["size"] // SECTOR_SIZE),
        ("Block size", info["block_size"]),
        ("Fallback", info["fallback"]),
        ("Inline crypto", _describe_caps(info["crypto"])),
    ]
    return [f"{label + ':':<19}{value}" for label, value in rows]


def info_lines(infos: Sequence[Mapping[str, Any]]) -> list[str]:
    if not infos:
        return [NO_DEVICES]
    out: list[str] = []
    for i, info in enumerate(infos):
        if i:
            out.append("")
        out.extend(info_block(info))
    return out


# --- fuseblk stats -----------------------------------------------------------------------------


def flatten(counters: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested counter groups as ``group.counter`` names (e.g. ``keyslots.programs``)."""
    flat: dict[str, Any] = {}
    for key, value in counters.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# One counter group per device or backend; any other section is a single group (the fallback),
# whatever its counters look like: the fallback's counters may be only its nested ``profile``.
_ENTITY_SECTIONS = ("devices", "backends")


def stats_sections(stats: Mapping[str, Any]) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """``(section, {entity: {counter: value}})`` for every section of a stats result."""
    sections: list[tuple[str, dict[str, dict[str, Any]]]] = []
    loose: dict[str, Any] = {}
    for section, value in stats.items():
        if section in _ENTITY_SECTIONS and isinstance(value, Mapping):
            sections.append((section, {name: flatten(c) for name, c in value.items()}))
        elif isinstance(value, Mapping):
            sections.append((section, {section: flatten(value)}))
        else:
            loose[section] = value
    if loose:
        sections.append(("totals", {"": loose}))
    return sections


def stats_lines(stats: Mapping[str, Any]) -> list[str]:
    """Each section as a table: one row per counter, one column per device or backend.

    Devices are few and counters many, so counters go down the page and the width stays small.
    """
    out: list[str] = []
    for section, entities in stats_sections(stats):
        names = list(entities)
        counters = sorted({c for group in entities.values() for c in group})
        if not names:
            continue
        if out:
            out.append("")
        rows: list[list[object]] = [[section.upper(), *names]]
        for counter in counters:
            rows.append([counter, *(entities[n].get(counter, 0) for n in names)])
        if not counters:  # a device nobody has used yet: say so rather than print nothing
            rows.append(["(nothing counted yet)", *("0" for _ in names)])
        out.extend(align(rows))
    return out or ["No statistics"]
