#!/usr/bin/env bash
# Runs the quickstart validation scenarios (feature list T032) against embedded stand-ins: nx-27017 MongoDB wire
# servers, a local managed identity endpoint that mints signed tokens, and an OIDC-enforcing proxy (see localdev/).
# One PASS/FAIL line per scenario; exit 0 only when all pass. Everything it starts is stopped when it exits,
# Ctrl-C included. Extra arguments go to `python -m localdev.quickstart` (--verbose, --work-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh

exec python -m localdev.quickstart "$@"
