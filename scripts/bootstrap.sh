# Sourced by the other scripts: create .venv on first use and keep it in step with requirements-dev.txt, and
# (with WITH_NODE=1) node_modules in step with package-lock.json (Azurite, the Azure Storage emulator the tests use).
# Needs Python 3.11+ (what Azure Functions runs) and Node.js 20.6+ with npm. Only the package registries are
# contacted (PyPI, npm), and only when the requirements or the lock file changed since the last install.
set -euo pipefail

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" - <<'PY' || { echo "error: Python 3.11 or newer is required (found $("$PYTHON" -V 2>&1))" >&2; exit 2; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON" -V)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
if command -v sha256sum >/dev/null; then hash_cmd=(sha256sum); else hash_cmd=(shasum -a 256); fi  # Linux / macOS
wanted=$(cat requirements.txt requirements-dev.txt | "${hash_cmd[@]}" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "installing requirements-dev.txt into .venv" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  echo "$wanted" > "$stamp"
fi

# Node.js tooling: Azurite only (test-time stand-in for Azure Storage queues; never deployed). The test command
# asks for it (WITH_NODE=1); running locally does not need it.
if [ "${WITH_NODE:-0}" = 1 ]; then
node_ok=$(node -e 'const [a, b] = process.versions.node.split(".").map(Number); console.log(a > 20 || (a === 20 && b >= 6) ? "yes" : "no")' 2>/dev/null || true)
if [ "$node_ok" != "yes" ] || ! command -v npm >/dev/null; then
  echo "error: Node.js 20.6 or newer with npm is required (for Azurite, the Azure Storage emulator the tests use); found: $(node --version 2>/dev/null || echo 'no node'), $(npm --version 2>/dev/null || echo 'no npm')" >&2
  echo "Tip: install Node.js 20 LTS or newer (https://nodejs.org/), then run this command again" >&2
  exit 2
fi
node_stamp=node_modules/.package-lock.sha256
node_wanted=$(cat package.json package-lock.json | "${hash_cmd[@]}" | cut -d' ' -f1)
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_wanted" ]; then
  echo "installing package-lock.json into node_modules (npm ci)" >&2
  # --ignore-scripts: nothing in the lock file needs an install script, and none should run unasked.
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2
  echo "$node_wanted" > "$node_stamp"
fi
fi

# shellcheck disable=SC1091
. .venv/bin/activate
