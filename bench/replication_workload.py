"""The replication benchmark's workload and its baseline: the raw loop a user would write.

Apart from the drains of ``replication_throughput`` so that what the replicator is compared with reads on its own.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.collection import Collection

from bench.common import Doc, order_document

WRITE_CHUNK = 1000  # source writes per bulk_write while preloading


# ---------------------------------------------------------------------------------------------- workload


def workload(n: int, seed: int) -> Iterator[list[InsertOne[Doc] | UpdateOne | DeleteOne]]:
    """N writes in chunks, each one change event: 70 % inserts, 20 % updates, 10 % deletes of live documents."""
    rng = random.Random(seed)
    live: list[str] = []
    chunk: list[InsertOne[Doc] | UpdateOne | DeleteOne] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.7 or len(live) < 10:
            live.append(f"doc-{i:08d}")
            chunk.append(InsertOne(order_document(live[-1], i, rng)))
        elif roll < 0.9:
            chunk.append(UpdateOne({"_id": rng.choice(live)}, {"$inc": {"qty": 1}, "$set": {"status": "updated"}}))
        else:
            at = rng.randrange(len(live))
            live[at], live[-1] = live[-1], live[at]
            chunk.append(DeleteOne({"_id": live.pop()}))
        if len(chunk) == WRITE_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def preload(collection: Collection[Doc], n: int, seed: int) -> float:
    """Write the workload; returns source writes per second."""
    started = time.perf_counter()
    for chunk in workload(n, seed):
        collection.bulk_write(chunk, ordered=True)
    return n / (time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- the raw loop


def drain_baseline(
    source: Collection[Doc], estuary: Collection[Doc], token: Mapping[str, Any], n: int, batch: int
) -> float:
    """The raw loop: read N events from ``token``, one bulk write per batch; returns seconds."""
    started = time.perf_counter()
    seen = 0
    ops: list[ReplaceOne[Doc] | DeleteOne] = []
    with source.watch(resume_after=token, full_document="updateLookup") as stream:
        while seen < n:
            event = stream.try_next()
            if event is not None:
                seen += 1
                if event["operationType"] == "delete":
                    ops.append(DeleteOne(event["documentKey"]))
                elif event.get("fullDocument") is not None:
                    ops.append(ReplaceOne(event["documentKey"], event["fullDocument"], upsert=True))
                if len(ops) < batch and seen < n:
                    continue
            if ops:
                # Unordered: pymongo's fast path (one command per operation type instead of one per run of equal
                # types). Correct for this workload, where a delete is always the last event of its _id; the
                # verification afterwards would catch it otherwise.
                estuary.bulk_write(ops, ordered=False)
                ops = []
    return time.perf_counter() - started
