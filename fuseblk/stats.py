"""Named counters: cheap to bump on the hot path, printable by ``fuseblk stats``."""

from __future__ import annotations

from collections import Counter


class Counters:
    """A bag of monotonically increasing integers, e.g. ``bios``, ``bytes_inline``, ``keyslot_programs``."""

    __slots__ = ("_c",)

    def __init__(self) -> None:
        self._c: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        self._c[name] += n

    def __getitem__(self, name: str) -> int:
        return self._c[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._c.items()))

    def reset(self) -> None:
        self._c.clear()
