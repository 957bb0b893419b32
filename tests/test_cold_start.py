"""A cold start indexes the app without the heavy libraries: they load on first use (``bench/cold_start.py`` times it).

Each check runs in a fresh interpreter, as the Functions worker imports ``function_app``: modules already imported by
this test process would hide what the import itself pulls in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shared

ROOT = Path(__file__).resolve().parent.parent
# What indexing must not import: the libraries and models a function only needs once it runs.
HEAVY = ("pymongo", "bson", "azure.identity", "msal", "opentelemetry", "pydantic", "yaml", "shared.config")

_INDEX = """
import json, sys
import function_app
names = sorted(f.get_function_name() for f in function_app.app.get_functions())
heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in {heavy!r}))
print(json.dumps({{"functions": names, "heavy": heavy}}))
"""


def index_in_a_fresh_process(setting: str) -> dict[str, list[str]]:
    code = _INDEX.format(heavy=HEAVY)
    env = {**os.environ, "REPLICATOR_CONFIG": setting}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    )
    indexed: dict[str, list[str]] = json.loads(out.stdout)
    return indexed


def test_indexing_the_app_should_import_none_of_the_heavy_libraries_or_the_configuration_models():
    indexed = index_in_a_fresh_process('{"streams": []}')
    assert indexed["functions"] == ["replicate_stream", "schedule_passes", "test_auth"]
    assert indexed["heavy"] == []


def test_the_app_should_still_index_its_functions_when_the_configuration_setting_is_wrong():
    for setting in ("/nonexistent/replicator.yaml", '{"streams": "not a list"', ""):
        indexed = index_in_a_fresh_process(setting)
        assert indexed["functions"] == ["replicate_stream", "schedule_passes", "test_auth"], setting


def test_every_public_name_of_shared_should_resolve_on_first_use_to_its_modules_object():
    code = "import shared, sys; print(json.dumps(['shared.services' in sys.modules, shared.Services.__module__]))"
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == [False, "shared.services"]  # not imported with the package; imported when asked
    for name in shared.__all__:
        value = getattr(shared, name)
        assert getattr(sys.modules[value.__module__], name) is value, name
    assert set(shared.__all__) <= set(dir(shared))


def test_an_unknown_name_of_shared_should_raise_attribute_error_and_submodules_should_still_import():
    with pytest.raises(AttributeError, match="NoSuchName"):
        shared.NoSuchName  # noqa: B018 (the attribute access is the test)
    from shared import mongo_uri  # a submodule, not an export: the import system falls back to importing it

    assert mongo_uri.__name__ == "shared.mongo_uri"
