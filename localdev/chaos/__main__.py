"""``python -m localdev.chaos``: see ``localdev.chaos.cli``."""

from __future__ import annotations

from localdev.chaos.cli import main

main()
