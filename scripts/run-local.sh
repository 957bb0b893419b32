#!/usr/bin/env bash
# Runs the replicator locally against embedded stand-ins: nx-27017 MongoDB wire servers, a local managed
# identity endpoint that mints signed tokens, and an OIDC-enforcing proxy (see localdev/). Everything it
# starts is stopped when it exits, Ctrl-C included. Extra arguments go to `python -m localdev.demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh

exec python -m localdev.demo "$@"
