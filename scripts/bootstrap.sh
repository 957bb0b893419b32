# Sourced by the other scripts: create .venv on first use and keep it in step with requirements-dev.txt.
# Needs Python 3.11+ (what Azure Functions runs). Only the package registry is contacted, and only when the
# requirements changed since the last install.
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
# shellcheck disable=SC1091
. .venv/bin/activate
