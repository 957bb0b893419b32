#!/usr/bin/env bash
# The test command: lint, format check, type check, then the whole test suite. Every service the tests need
# (nx-27017 MongoDB wire servers, Azurite queues, the managed-identity stub, the OIDC proxy) is started by the tests
# themselves and stopped when they end. Extra arguments go to pytest (e.g. -k token, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_NODE=1 . scripts/bootstrap.sh

ruff check .
ruff format --check .
mypy
pytest "$@"
