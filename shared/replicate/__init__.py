"""Orchestration: the only package that joins the change-stream reader, the estuary writer and the checkpoint store.

One module per orchestration: ``passes`` (one pass of one stream: lease, phases, outcome), ``streaming`` (the
streaming loop), ``copying`` (initial sync / resnapshot), ``replay`` (dead letters written again from the source),
``reset`` (the operator's restart of a stream).
"""

from __future__ import annotations

from shared.replicate.outcome import PassOutcome, PassResult
from shared.replicate.passes import Collections, Replicator
from shared.replicate.replay import ReplayResult, replay
from shared.replicate.reset import ResetMode, reset_stream

__all__ = [
    "Collections",
    "PassOutcome",
    "PassResult",
    "ReplayResult",
    "Replicator",
    "ResetMode",
    "replay",
    "reset_stream",
]
