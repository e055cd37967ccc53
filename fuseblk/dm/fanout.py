"""Run the pieces of one bio concurrently and fail like one bio.

A bio split across targets or stripes completes when every piece has; if pieces fail, the bio
fails with the first piece's error (the kernel keeps the first ``bi_status`` too). Collecting the
errors here, instead of letting a trio nursery raise an ExceptionGroup, keeps ``FuseblkError``
the only thing that crosses layers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from fuseblk.errors import FuseblkError

# Below this many bytes a bio's pieces run one after the other: a nursery and its tasks cost
# more than small pieces gain from overlapping (tools/bench_dm_overhead.py measures both).
CONCURRENT_MIN_BYTES = 128 * 1024


async def fan_out(calls: Sequence[Callable[[], Awaitable[None]]], concurrent: bool = True) -> None:
    """Await every call (concurrently unless told not to); raise the first FuseblkError after
    all have finished."""
    failures: list[FuseblkError] = []
    if len(calls) == 1 or not concurrent:
        for call in calls:
            try:
                await call()
            except FuseblkError as err:
                failures.append(err)
        if failures:
            raise failures[0]
        return

    async def run(call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        except FuseblkError as err:
            failures.append(err)

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(run, call)
    if failures:
        raise failures[0]
