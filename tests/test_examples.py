"""Every example a user can copy validates, and docs/configuration.md's reference matches the models."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.config_loader import load_config
from shared.config_reference import config_reference

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples" / "configs").rglob("*.yaml"))
PLAUSIBLE: dict[str, Callable[[str], str]] = {  # setting-name suffix -> a plausible, distinct value
    "_MONGODB_URI": lambda name: f"mongodb://{name.lower().replace('_', '-')}.example.net/",
    "_CLUSTER": lambda name: name.lower().replace("_", "-"),
    "AZURE_TENANT_ID": lambda _: "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "AZURE_CLIENT_ID": lambda _: "5a6b7c8d-0000-4000-8000-0000000000a1",
}


def settings_for(text: str) -> dict[str, str]:
    without_comments = re.sub(r"#.*", "", text)
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", without_comments))
    return {n: next(make(n) for suffix, make in PLAUSIBLE.items() if n.endswith(suffix)) for n in names}


def test_there_are_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_should_validate(path):
    config = load_config(path, environ=settings_for(path.read_text()))
    assert config.streams


def test_local_settings_example_should_point_at_an_example_that_exists():
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    assert (ROOT / values["REPLICATOR_CONFIG"]).is_file()


def test_configuration_reference_should_match_the_models():
    page = (ROOT / "docs" / "configuration.md").read_text()
    match = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", page, re.DOTALL)
    assert match, "docs/configuration.md lacks the config-reference markers"
    assert match.group(1) == config_reference(), "stale: run .venv/bin/python scripts/update_config_reference.py"
