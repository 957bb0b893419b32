"""What ``func azure functionapp publish`` uploads: the project minus ``.funcignore``, and the app still loads.

Core Tools cannot run here, so its file selection is rebuilt from its source
(https://github.com/Azure/azure-functions-core-tools, ``src/Cli/func/Common/GitIgnoreParser.cs`` and
``FileSystemHelpers.GetLocalFiles``). Its matching is *not* git's: every pattern is anchored at the project root
and must end on a word boundary, ``*`` does not cross ``/``, and ``**`` is any run of characters; so a bare
``__pycache__`` only drops the top-level folder. The package is then copied alone into a temporary folder and
the app indexed from there in a fresh interpreter, the way the Functions Python worker loads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Always left out by Core Tools, whatever .funcignore says.
SKIPPED_DIRECTORIES = {".git", ".vscode"}
SKIPPED_FILES = {".funcignore", ".gitignore", "appsettings.json", "local.settings.json", "project.lock.json"}
# Characters GitIgnoreParser.PrepareRegexPattern escapes before turning ** and * into groups.
_SPECIAL = re.compile(r"[\-\[\]/{}()+?.\\^$|]")


def _pattern_regex(pattern: str) -> str:
    return _SPECIAL.sub(lambda m: "\\" + m.group(0), pattern).replace("**", "(.+)").replace("*", "([^\\/]+)")


def _rules(patterns: list[str]) -> re.Pattern[str]:
    if not patterns:
        return re.compile("$^")
    return re.compile("^((" + ")|(".join(_pattern_regex(p) for p in patterns) + "))\\b")


def package_files(root: Path) -> set[str]:
    """Project-relative paths (with ``/``) of the files Core Tools would zip."""
    positive: list[str] = []
    negative: list[str] = []
    for line in (raw.strip() for raw in (root / ".funcignore").read_text(encoding="utf-8").split("\n")):
        if not line or line.startswith("#"):
            continue
        (negative if line.startswith("!") else positive).append(line.removeprefix("!").removeprefix("/"))
    ignored, kept = _rules(positive), _rules(negative)

    files: set[str] = set()
    for folder, directories, names in os.walk(root):
        relative = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # Pruning a matched folder is exact only without "!" patterns (they could keep a file inside it).
        directories[:] = [
            d for d in directories if d not in SKIPPED_DIRECTORIES and (negative or not ignored.match(prefix + d + "/"))
        ]
        for name in names:
            path = prefix + name
            if name not in SKIPPED_FILES and (kept.match(path) or not ignored.match(path)):
                files.add(path)
    return files


@pytest.fixture(scope="module")
def package() -> set[str]:
    return package_files(ROOT)


def sources(folder: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py")}


def test_the_package_should_hold_the_app_and_its_settings(package):
    runtime = {"function_app.py", "host.json", "requirements.txt"} | sources("shared")
    assert {p for p in runtime if p.endswith(".py")} >= {"function_app.py", "shared/__init__.py"}
    assert runtime <= package, sorted(runtime - package)


def test_the_package_should_leave_out_tests_tooling_local_state_and_compiled_files(package):
    left_out = (
        "tests/",
        "bench/",
        "localdev/",
        "scripts/",
        "examples/",
        "infra/",
        ".venv/",
        "node_modules/",
        ".local/",
    )
    assert not [p for p in package if p.startswith(left_out)]
    assert not [p for p in package if "__pycache__/" in p or p.endswith(".pyc")]
    assert not [p for p in package if Path(p).name.startswith("local.settings")]
    # Nothing outside the runtime set: a new top-level file must be placed on purpose on one side or the other.
    assert {p.split("/")[0] for p in package} == {"function_app.py", "host.json", "requirements.txt", "shared"}


def test_the_app_should_index_from_the_package_alone(package, tmp_path):
    for path in package:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tmp_path / path)
    probe = (
        "import json, function_app, shared;"
        "print(json.dumps({'shared': shared.__file__,"
        " 'functions': sorted(f.get_function_name() for f in function_app.app.get_functions())}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(loaded["shared"]).is_relative_to(tmp_path)  # the package's copy, not the project's
    assert loaded["functions"] == ["replicate_stream", "schedule_passes", "test_auth"]
