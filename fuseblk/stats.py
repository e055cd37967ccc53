"""Named counters: cheap to bump on the hot path, printable by ``fuseblk stats``."""

from __future__ import annotations

from collections import Counter


class Counters(Counter[str]):
    """A bag of monotonically increasing integers, e.g. ``bios``, ``bytes_inline``, ``keyslot_programs``.

    A :class:`collections.Counter`, so the hot path bumps one with ``counters["bios"] += 1``: a
    dictionary update in C, where a method call per counter would cost as much as the rest of
    a layer's bookkeeping. An absent name reads as 0.
    """

    def add(self, name: str, n: int = 1) -> None:
        self[name] += n

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.items()))

    def reset(self) -> None:
        self.clear()
