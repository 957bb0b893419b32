"""A lease: one worker's right to write one stream, for a while, fenced by an epoch that only grows.

The checkpoint store grants leases (``position.CheckpointStore.acquire``) and checks them on every checkpoint write;
the estuary fence (``fence.EstuaryFence``) checks the same epoch where the data lands. Both refuse a worker whose
lease was taken over with ``LeaseLostError``.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import ReplicatorError

if TYPE_CHECKING:
    from shared.clock import Clock


class LeaseLostError(ReplicatorError):
    """Another worker took this stream over; this one must stop writing (its work is replayed idempotently)."""


@dataclass(frozen=True)
class Lease:
    """Proof of ownership of a stream for one pass; every checkpoint write is conditional on it."""

    stream: str
    owner: str
    epoch: int
    expires_at: float


class HeldLease:
    """The lease of a worker that writes a stream: fenced writes use ``lease``, the saves that renew it hand the
    renewed one to ``renewed``, and ``remaining`` says how long the stream is still this worker's, by its own clock
    (the clock that set the expiry)."""

    def __init__(self, lease: Lease, *, clock: Clock) -> None:
        self.lease = lease
        self._clock = clock

    def renewed(self, lease: Lease) -> None:
        self.lease = lease

    def remaining(self) -> float:
        return self.lease.expires_at - self._clock.time()


def owner_id(role: str) -> str:
    """A lease owner id unique to one holder: who (a pass, a replay, a reset) and where, so ``status`` helps an
    operator find it (the Functions instance id when there is one, else the host name)."""
    host = os.environ.get("WEBSITE_INSTANCE_ID", "")[:12] or socket.gethostname()
    return f"{role}@{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
