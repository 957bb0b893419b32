"""``verify``: compare a stream's source and estuary (counts, sampled or full hashes by ``_id``)."""

from __future__ import annotations

from shared.cli.common import Command

COMMANDS: tuple[Command, ...] = ()
