"""The one wiring function: every entry point (Functions, the command line, localdev, bench) builds its objects here.

Configuration -> clients -> stores -> the pass runner. Each object receives what it uses through its constructor;
an entry point takes from ``Services`` only what it hands on, and nothing reaches back through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.clock import SystemClock
from shared.dead_letters import DeadLetters
from shared.position import CheckpointStore
from shared.replicate import Replicator
from shared.telemetry import ReplicationMetrics

if TYPE_CHECKING:
    from shared.auth.mongo_client import ClientFactory
    from shared.clock import Clock
    from shared.config import ReplicatorConfig

CHECKPOINTS_COLLECTION = "checkpoints"  # in the checkpoint store's database, unless checkpoints.collection says
DEAD_LETTERS_COLLECTION = "dead_letters"  # next to it


@dataclass(frozen=True)
class Services:
    """What the entry points hand on: the configuration, the clock and meters, the clients, the stores, passes."""

    config: ReplicatorConfig
    clock: Clock
    metrics: ReplicationMetrics
    clients: ClientFactory  # ``clients.collection(endpoint)``: an endpoint's collection, raw BSON
    checkpoints: CheckpointStore
    dead_letters: DeadLetters
    replicator: Replicator


def build_services(
    config: ReplicatorConfig,
    *,
    factory: ClientFactory,
    clock: Clock | None = None,
    metrics: ReplicationMetrics | None = None,
) -> Services:
    """Wire the replicator for ``config`` on ``factory``'s shared clients (nothing connects until first use)."""
    clock = clock or SystemClock()
    metrics = metrics or ReplicationMetrics()
    store = config.checkpoints
    database = factory.client(store)[store.database or ""]
    checkpoints = CheckpointStore(database[store.collection or CHECKPOINTS_COLLECTION], clock=clock)
    dead_letters = DeadLetters(database[DEAD_LETTERS_COLLECTION], clock=clock)
    replicator = Replicator(
        config, checkpoints=checkpoints, dead_letters=dead_letters, collections=factory, clock=clock, metrics=metrics
    )
    return Services(config, clock, metrics, factory, checkpoints, dead_letters, replicator)
