"""Per-interval rates from two snapshots of the daemon's counters, for ``fuseblk stats --watch``.

The daemon keeps monotonic counters only (``fuseblk stats``); rates are the difference of two
snapshots over the time between them, as ``iostat -x`` computes its columns from
/proc/diskstats. A device or backend that appears between two snapshots is counted from zero; one
that went away is left out. The share columns say how the bios that carried an encryption context
were served where the block layer decided: inline (the device's profile took the context) or by
the software fallback. A device that only passed contexts down (``fallback=target``) decided
nothing: its shares are ``-`` and the devices below show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MB = 1_000_000

# column name -> what it shows, in the order printed
COLUMNS = (
    "r/s",
    "w/s",
    "MB/s",
    "inline%",
    "fallback%",
    "prog/s",
    "hit/s",
    "wait/s",
    "evict/s",
    "fault/s",
    "err/s",
)


def _delta(now: Mapping[str, Any], before: Mapping[str, Any] | None, name: str) -> int:
    value = now.get(name, 0)
    old = before.get(name, 0) if before is not None else 0
    return max(0, int(value) - int(old)) if isinstance(value, int) else 0


def entity_rates(
    now: Mapping[str, Any], before: Mapping[str, Any] | None, seconds: float
) -> dict[str, float | None]:
    """The rates of one device or backend between two of its counter groups.

    Counters appear in a snapshot once first counted, so a missing one is zero. The keyslot
    columns are None for a group without a keyslot ``profile`` (mapped devices, hardware without
    inline encryption); the shares are None when no bio with a context was decided here.
    """

    def rate(name: str) -> float:
        return _delta(now, before, name) / seconds

    profile = now.get("profile")
    old_profile = before.get("profile") if before is not None else None

    def slot_rate(name: str) -> float | None:
        if not isinstance(profile, Mapping):
            return None
        return (
            _delta(profile, old_profile if isinstance(old_profile, Mapping) else None, name)
            / seconds
        )

    def fault_rate() -> float | None:
        """Injected keyslot faults that fired (``fuseblk hw fault``): hardware with keyslots only."""
        if not isinstance(profile, Mapping):
            return None
        fired = _delta(now, before, "fault_program_errors") + _delta(
            now, before, "fault_evict_errors"
        )
        return fired / seconds

    inline = _delta(now, before, "inline_bios")
    fallback = _delta(now, before, "fallback_bios")
    with_context = inline + fallback
    return {
        "r/s": rate("reads"),
        "w/s": rate("writes"),
        "MB/s": rate("bytes") / MB,
        "inline%": 100.0 * inline / with_context if with_context else None,
        "fallback%": 100.0 * fallback / with_context if with_context else None,
        "prog/s": slot_rate("programs"),
        "hit/s": slot_rate("hits"),
        "wait/s": slot_rate("waits"),
        "evict/s": slot_rate("evictions"),
        "fault/s": fault_rate(),
        "err/s": rate("errors"),
    }


# The fallback keeps no read, write or error counters (its bios are the devices'), and decides
# nothing: it is where the decision sent a context.
_NOT_KEPT_BY_FALLBACK = ("r/s", "w/s", "inline%", "fallback%", "fault/s", "err/s")


def interval_rates(
    now: Mapping[str, Any], before: Mapping[str, Any], seconds: float
) -> dict[str, Any]:
    """``{"interval_s", "devices": {name: rates}, "backends": {...}, "fallback": rates}``."""
    out: dict[str, Any] = {"interval_s": round(seconds, 6)}
    for section in ("devices", "backends"):
        groups = now.get(section, {})
        old_groups = before.get(section, {})
        out[section] = {
            name: entity_rates(group, old_groups.get(name), seconds)
            for name, group in groups.items()
        }
    if "fallback" in now:
        fallback = entity_rates(now["fallback"], before.get("fallback"), seconds)
        out["fallback"] = {
            k: None if k in _NOT_KEPT_BY_FALLBACK else v for k, v in fallback.items()
        }
    return out


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def rate_lines(rates: Mapping[str, Any]) -> list[str]:
    """One row per device, backend and the fallback, ``iostat -x`` style: names left-aligned,
    rates right-aligned, ``-`` where a column does not apply."""
    rows: list[list[str]] = [["DEVICE", "KIND", *COLUMNS]]
    for section, kind in (("devices", "dm"), ("backends", "hw")):
        for name, values in rates.get(section, {}).items():
            rows.append([name, kind, *(_cell(values[c]) for c in COLUMNS)])
    if "fallback" in rates:
        rows.append(["blk-crypto-fallback", "sw", *(_cell(rates["fallback"][c]) for c in COLUMNS)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
