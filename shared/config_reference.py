"""The configuration reference, generated from the pydantic models (docs/configuration.md embeds it; tested)."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from shared.config import MongoConfig, ReplicatorConfig, StreamConfig, TransformConfig
from shared.config_types import parse_duration


def config_reference() -> str:
    """The configuration reference as Markdown tables, generated from the models (docs/configuration.md embeds it)."""
    sections = (
        ("Top level", ReplicatorConfig),
        ("`streams[]`", StreamConfig),
        ("`streams[].transform`", TransformConfig),
        ("Every endpoint (`checkpoints`, `streams[].source`, `streams[].estuary`, and `defaults`)", MongoConfig),
    )
    out: list[str] = []
    for title, model in sections:
        out += [f"#### {title}", "", "| field | default | rules | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            out.append(f"| `{name}` | {_default_text(field)} | {_rules_text(field)} | {field.description or ''} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _is_duration(field: FieldInfo) -> bool:
    return any(getattr(m, "func", None) is parse_duration for m in field.metadata)


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is None:
        return "—"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`" + (" s" if _is_duration(field) else "")


def _rules_text(field: FieldInfo) -> str:
    rules = ["duration (`30s`, `5m`, `1h`, `500ms` or seconds)"] if _is_duration(field) else []
    for attr, sign in (("gt", ">"), ("ge", "≥"), ("le", "≤"), ("min_length", "items ≥")):
        for meta in field.metadata:
            bound = getattr(meta, attr, None)
            if bound is not None:
                rules.append(f"{sign} {int(bound) if float(bound).is_integer() else bound}")
    if get_origin(field.annotation) is Literal:
        rules.append("one of " + ", ".join(f"`{v}`" for v in get_args(field.annotation)))
    return "; ".join(rules)
