"""The checkpoint store against a server that refuses for a while (the faithful stand-in's failure hooks)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient

from localdev.standins.faithful import FaithfulServer
from shared.errors import TransientError
from shared.position import Checkpoint, CheckpointStore
from tests.conftest import FakeClock


def test_a_fenced_write_should_ride_out_a_transient_refusal_and_give_up_as_transient_after_a_few():
    """Throttling (16500) on the checkpoint store must not fail a pass at once (the docs promise it is retried)."""
    clock = FakeClock()
    with FaithfulServer() as server, MongoClient[dict[str, Any]](server.uri) as client:
        store = CheckpointStore(client.rep.checkpoints, clock=clock)
        acquired = store.acquire("orders", "w", 30)
        assert acquired is not None
        server.fail("update", 16500, "Request rate is large", times=2, write_error=True)
        store.save(acquired.lease, duration=30, resume_token={"_data": "t1"})
        assert clock.sleeps == [0.5, 1.0]  # two refusals, then the write went through
        assert (store.read("orders") or Checkpoint("orders")).resume_token == {"_data": "t1"}
        server.fail("update", 16500, "Request rate is large", times=3, write_error=True)
        with pytest.raises(TransientError, match="checkpoint write failed: WriteError 16500"):
            store.save(acquired.lease, duration=30, resume_token={"_data": "t2"})
