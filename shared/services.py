"""The one wiring function: every entry point (Functions, the command line, localdev, bench) builds its objects here.

Configuration -> clients -> stores -> the pass runner. Each object receives what it uses through its constructor;
an entry point takes from ``Services`` only what it hands on, and nothing reaches back through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.clock import SystemClock
from shared.dead_letters import DeadLetters
from shared.discovery import Discovery
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
    discovery: Discovery
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
    own = (store.collection or CHECKPOINTS_COLLECTION, DEAD_LETTERS_COLLECTION)
    checkpoints = CheckpointStore(database[own[0]], clock=clock)
    dead_letters = DeadLetters(database[own[1]], clock=clock)
    discovery = Discovery(config, clients=factory, checkpoints=checkpoints, own_collections=own)
    replicator = Replicator(
        config,
        checkpoints=checkpoints,
        dead_letters=dead_letters,
        collections=factory,
        discovery=discovery,
        clock=clock,
        metrics=metrics,
    )
    return Services(config, clock, metrics, factory, checkpoints, dead_letters, discovery, replicator)
