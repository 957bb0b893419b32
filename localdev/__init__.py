"""Local development: the stand-ins for Azure (``localdev.standins``) and the programs that use them.

``demo`` is the README's "run it locally" command (``./scripts/run-local.sh``); ``quickstart`` runs the
feature list's validation scenarios (``./scripts/quickstart.sh``). Test and demo tooling, never deployed.
"""

from __future__ import annotations
