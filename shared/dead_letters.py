"""The dead-letter collection: events the estuary refused for good, parked with the error and the attempts.

Parked events are keyed by (stream, event token), so parking the same event again (a replayed batch) does not
duplicate it. They live next to the checkpoints, in the checkpoint store's database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bson.raw_bson import RawBSONDocument
    from pymongo.collection import Collection

    from shared.clock import Clock


class DeadLetters:
    """Parks events the estuary refused for good; keyed by (stream, event token), so replays do not duplicate."""

    def __init__(self, collection: Collection[Any], *, clock: Clock) -> None:
        self._collection = collection
        self._clock = clock

    def park(self, stream: str, event: RawBSONDocument, *, code: int | None, message: str, attempts: int) -> None:
        now = self._clock.time()
        self._collection.replace_one(
            {"_id": {"stream": stream, "token": event["_id"]}},
            {
                "_id": {"stream": stream, "token": event["_id"]},
                "stream": stream,
                "operation": event["operationType"],
                "document_key": event["documentKey"],
                "event": event,
                "error": {"code": code, "message": message[:2000]},
                "attempts": attempts,
                "parked_at": now,
            },
            upsert=True,
        )
