"""Rewrite the configuration reference in docs/configuration.md from the pydantic models (tests fail when stale)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.config_reference import config_reference

MARKERS = re.compile(r"<!-- config-reference:start -->\n.*?<!-- config-reference:end -->", re.DOTALL)
PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
block = f"<!-- config-reference:start -->\n{config_reference()}<!-- config-reference:end -->"
PAGE.write_text(MARKERS.sub(lambda _: block, PAGE.read_text()))
