"""``dead-letters``: list, replay or purge the events the estuary refused."""

from __future__ import annotations

from shared.cli.common import Command

COMMANDS: tuple[Command, ...] = ()
