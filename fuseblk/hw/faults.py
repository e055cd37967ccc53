"""Faults injected into an engine's keyslot operations: what a failing controller does.

A :class:`FaultPlan` is consulted by the engine's keyslot ops (``blk_crypto_ll_ops``) each time
the profile programs or evicts a slot. It says whether that call fails, and how long programming
takes. It lives in memory only: an image never records it, and detaching forgets it.

A failure either hits the next ``count`` calls (then the fault is spent) or each call with a
probability, drawn from a generator seeded by the caller so that a run can be replayed. The
failure is the driver's error as a controller would report it, EIO; what the kernel makes of
it is the profile's business (:mod:`fuseblk.blkcrypto.keyslot_manager`):

* a failed ``keyslot_program`` fails the bio that needed the slot: ``blk_crypto_get_keyslot``
  returns ``errno_to_blk_status(-EIO)``, ``BLK_STS_IOERR``, so the file sees EIO; the slot is
  left empty where the kernel keeps the key it held mapped (the profile's documented deviation:
  hardware that failed mid-programming holds no usable key);
* a failed ``keyslot_evict`` is returned to the evictor (``__blk_crypto_evict_key``), and the
  slot is unlinked anyway, because callers free the key even on error. (Since Linux 6.4
  ``blk_crypto_evict_key`` itself returns void and only logs; fuseblk's evictor is a command,
  so it is told.)

The counters (``fault_program_errors``, ``fault_evict_errors``, ``fault_slow_programs``) are the
engine's, so ``fuseblk stats`` shows them beside the I/O they disturbed.
"""

from __future__ import annotations

import errno
import math
import random
from dataclasses import dataclass
from enum import Enum
from typing import Any

import trio

from fuseblk.errors import FuseblkError, einval
from fuseblk.stats import Counters

MAX_SLOW_PROGRAM_MS = 60_000  # a controller that takes longer than this has hung


class FaultKind(Enum):
    PROGRAM_FAIL = "program-fail"
    EVICT_FAIL = "evict-fail"


@dataclass
class Failure:
    """One kind of failure: the next ``remaining`` calls, or each with ``probability``."""

    kind: FaultKind
    remaining: int | None  # None: until cleared
    probability: float
    seed: int | None
    rng: random.Random

    def fires(self) -> bool:
        if self.remaining is not None:
            self.remaining -= 1
            return True
        return self.rng.random() < self.probability

    @property
    def spent(self) -> bool:
        return self.remaining == 0

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"fault": self.kind.value}
        if self.remaining is not None:
            entry["remaining"] = self.remaining
        else:
            entry["probability"] = self.probability
            if self.seed is not None:
                entry["seed"] = self.seed
        return entry


class FaultPlan:
    """The faults armed on one engine, and the counters of those that fired."""

    def __init__(self, name: str, counters: Counters) -> None:
        self._name = name
        self._counters = counters
        self._failures: dict[FaultKind, Failure] = {}
        self._slow_program_ms = 0

    def fail(
        self,
        kind: FaultKind,
        count: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Arm ``kind``: the next ``count`` calls fail, or each with ``probability`` (default:
        every call until cleared). Replaces an armed fault of the same kind."""
        if count is not None and probability is not None:
            raise einval(f"{kind.value}: give a count or a probability, not both")
        if count is not None and count < 1:
            raise einval(f"{kind.value}: count must be at least 1, got {count}")
        if probability is not None and not (
            math.isfinite(probability) and 0.0 <= probability <= 1.0
        ):
            raise einval(f"{kind.value}: probability must be from 0 to 1, got {probability}")
        self._failures[kind] = Failure(
            kind,
            remaining=count,
            probability=1.0 if probability is None else probability,
            seed=seed,
            rng=random.Random(seed),
        )

    def slow_program(self, ms: int) -> None:
        """Every slot programming takes ``ms`` milliseconds more (0 turns it off)."""
        if not 0 <= ms <= MAX_SLOW_PROGRAM_MS:
            raise einval(f"slow-program: delay must be from 0 to {MAX_SLOW_PROGRAM_MS} ms")
        self._slow_program_ms = ms

    def clear(self) -> None:
        """Disarm every fault; the counters keep what already fired."""
        self._failures.clear()
        self._slow_program_ms = 0

    def check(self, kind: FaultKind, slot: int | None) -> None:
        """Raise the driver's EIO if an armed ``kind`` fires on this call."""
        failure = self._failures.get(kind)
        if failure is None or not failure.fires():
            return
        if failure.spent:
            del self._failures[kind]
        counter = "fault_program_errors" if kind is FaultKind.PROGRAM_FAIL else "fault_evict_errors"
        self._counters.add(counter)
        where = f" keyslot {slot}" if slot is not None else ""
        raise FuseblkError(errno.EIO, f"{self._name}:{where} injected {kind.value}")

    async def program_delay(self) -> None:
        if self._slow_program_ms:
            self._counters.add("fault_slow_programs")
            await trio.sleep(self._slow_program_ms / 1000)

    def to_json(self) -> list[dict[str, Any]]:
        """The armed faults, for ``fuseblk hw status``."""
        faults = [f.to_json() for f in self._failures.values()]
        if self._slow_program_ms:
            faults.append({"fault": "slow-program", "ms": self._slow_program_ms})
        return faults
