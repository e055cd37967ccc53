"""A blocking call started at once in a worker thread, whose result is awaited later.

``trio.to_thread.run_sync`` starts its thread only when awaited, so the caller cannot do other
work meanwhile. The engine overlaps the storage I/O of a large encrypted request with its
cipher work (which holds the trio thread anyway): the I/O of one part runs in a worker thread,
which releases the GIL in the system call, while the trio thread en/decrypts another part. By
the time the caller awaits, the thread has usually finished, and the result is taken without
a trip through the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


class BackgroundCall:
    """``fn()`` running in trio's thread cache from construction; :meth:`wait` for its result.

    Must be made and awaited on the trio thread. Every call must be waited for, even when the
    caller fails meanwhile: the thread may still be using the caller's buffers.
    """

    __slots__ = ("_outcome", "_finished")

    def __init__(self, fn: Callable[[], object]) -> None:
        self._outcome: Any = None  # an outcome.Outcome, set by the worker thread
        self._finished = trio.Event()
        token = trio.lowlevel.current_trio_token()
        finished = self._finished

        def deliver(result: Any) -> None:  # in the worker thread
            self._outcome = result
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:  # the loop is gone: nobody is waiting
                pass

        trio.lowlevel.start_thread_soon(fn, deliver)

    async def wait(self) -> object:
        """``fn``'s return value, or its exception. Not cancellable, like ``to_thread.run_sync``:
        the call has its buffers until it returns."""
        if self._outcome is None:
            with trio.CancelScope(shield=True):
                await self._finished.wait()
        return self._outcome.unwrap()
