#!/usr/bin/env bash
# A chaos soak on the local stand-ins: several replicator workers competing for passes under a continuous mixed
# workload while faults are injected at random (kills, pauses past the lease, stalled and failing estuary paths,
# throttling, re-authentication, token revocation, identity endpoint failures, duplicated pass requests); at the end
# a full verify and a byte comparison must find no difference. Everything it starts is stopped when it exits,
# Ctrl-C included. Arguments go to `python -m localdev.chaos` (--minutes N | --seconds N, --workers, --seed,
# --work-dir, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh

exec python -m localdev.chaos "$@"
