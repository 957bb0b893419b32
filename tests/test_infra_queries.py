"""The KQL queries under infra/queries/: they name only what the code emits, and the workbook or an alert uses each.

A query naming a metric or an event the app never emits would show an empty chart or an alert that never fires,
without any error; these checks read the names from the code itself.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any

from opentelemetry import metrics

from shared.telemetry import AuthMetrics, ReplicationMetrics
from tests.bicep import BICEP_FILES, INFRA, ROOT, Template


class _RecordingMeter:
    """Stands in for an OpenTelemetry meter to list the instrument names the app creates."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def _create(self, name: str, **_: Any) -> _RecordingMeter:
        self.names.add(name)
        return self

    create_counter = create_histogram = create_up_down_counter = _create


def test_queries_should_name_only_metrics_and_events_the_code_emits() -> None:
    meter = _RecordingMeter()
    AuthMetrics(typing.cast("metrics.Meter", meter))
    ReplicationMetrics(typing.cast("metrics.Meter", meter))
    events = {m for f in (ROOT / "shared").rglob("*.py") for m in re.findall(r'"event": "(\w+)"', f.read_text())}
    loaded = {m for p in BICEP_FILES for m in re.findall(r"loadTextContent\('\.\./queries/([\w.-]+)'\)", p.read_text())}

    for query in sorted((INFRA / "queries").glob("*.kql")):
        text = query.read_text(encoding="utf-8")
        assert set(re.findall(r"replicator_\w+", text)) <= meter.names, query.name
        named_events = re.search(r"event in \(([^)]*)\)", text)
        if named_events:
            assert set(re.findall(r'"(\w+)"', named_events.group(1))) <= events, query.name
        assert query.name in loaded, f"{query.name} is neither in the workbook nor in an alert"


def test_workbook_should_carry_every_dashboard_query_as_valid_json() -> None:
    workbook = Template(
        INFRA / "app" / "workbook.bicep", {"applicationInsightsName": "appi", "location": "x", "displayName": "d"}
    )
    content = json.loads(workbook.body("resource", "workbook")["properties"]["serializedData"])
    queries = {item["content"]["query"] for item in content["items"] if item["type"] == 3}
    for name in (
        "replication-lag",
        "collections-behind",
        "events-per-second",
        "auth-failures",
        "token-cache-hit-ratio",
        "pass-outcomes",
        "dead-letters",
        "notable-events",
    ):
        assert (INFRA / "queries" / f"{name}.kql").read_text(encoding="utf-8") in queries
