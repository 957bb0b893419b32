"""Load the configuration: read the file or app setting, expand ``${NAME}``, merge ``defaults:``, validate.

Configuration is built by ``load_config`` / ``get_config`` when first needed, never at import time: a
validation error during import would make every function disappear from the Functions host. Every problem is
reported at once as ``path: message`` (``streams[0].source.tenant_id: must be a UUID``), never echoing input
that could hold a password.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.config import MongoConfig, ReplicatorConfig, StreamConfig, TransformConfig
from shared.config_types import FieldProblems
from shared.errors import ConfigError

CONFIG_SETTING = "REPLICATOR_CONFIG"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> ReplicatorConfig:
    """Read, expand and validate the configuration, or raise ``ConfigError`` listing every problem.

    ``path`` wins; otherwise the ``REPLICATOR_CONFIG`` setting holds a file path or inline JSON.
    """
    env = os.environ if environ is None else environ
    text, source = _read_source(path, env)
    raw = _parse(text, source)
    problems: list[str] = []
    expanded = _expand_env(raw, env, "", problems)
    merged, inherited = _apply_defaults(expanded, problems)
    if problems:
        raise ConfigError(problems, source=source)
    try:
        return ReplicatorConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, inherited), source=source) from None


@functools.cache
def get_config() -> ReplicatorConfig:
    """The app's configuration from the ``REPLICATOR_CONFIG`` setting, validated once per process."""
    return load_config()


def _read_source(path: str | Path | None, env: Mapping[str, str]) -> tuple[str, str]:
    if path is None:
        setting = env.get(CONFIG_SETTING, "").strip()
        if not setting:
            raise ConfigError(
                ["no configuration given"],
                hint=f"pass --config FILE, or set the app setting {CONFIG_SETTING} to a file path or inline JSON",
            )
        if setting.startswith("{"):
            return setting, f"{CONFIG_SETTING} (inline JSON)"
        path = setting
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8"), str(file)
    except FileNotFoundError:
        raise ConfigError(
            [f"file not found: {file}"], hint="check the path (relative paths start at the current directory)"
        ) from None
    except OSError as exc:
        raise ConfigError([f"cannot read {file}: {exc.strerror}"]) from None


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"], source=source
        ) from None
    except yaml.YAMLError as exc:
        # Never echo the offending line: it may hold a connection string with a password.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            [f"not valid YAML{where}: {getattr(exc, 'problem', None) or 'syntax error'}"], source=source
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping with 'checkpoints:' and 'streams:'"], source=source)
    return data


def _expand_env(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace ``${NAME}`` in every string with the app setting / environment variable ``NAME``."""
    if isinstance(value, dict):
        return {k: _expand_env(v, env, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def _lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            problems.append(f"{path}: references ${{{name}}}, but the setting / environment variable {name} is not set")
            return ""
        return env[name]

    return _ENV_REFERENCE.sub(_lookup, value)


def _apply_defaults(raw: dict[str, Any], problems: list[str]) -> tuple[dict[str, Any], set[tuple[str | int, ...]]]:
    """Merge ``defaults:`` into every endpoint; return the merged data and which locations were inherited."""
    data = dict(raw)
    defaults = data.pop("defaults", None) or {}
    inherited: set[tuple[str | int, ...]] = set()
    if not isinstance(defaults, dict):
        problems.append("defaults: must be a mapping of endpoint fields")
        return data, inherited
    for key in defaults:
        if key not in MongoConfig.model_fields:
            problems.append(f"defaults.{key}: unknown field{_did_you_mean(str(key))}")

    def _merge(endpoint: Any, loc: tuple[str | int, ...]) -> Any:
        if not isinstance(endpoint, dict):
            return endpoint
        inherited.update((*loc, key) for key in defaults if key not in endpoint)
        return {**defaults, **endpoint}

    if "checkpoints" in data:
        data["checkpoints"] = _merge(data["checkpoints"], ("checkpoints",))
    streams = data.get("streams")
    if isinstance(streams, list):
        data["streams"] = [
            {
                **s,
                **{role: _merge(s.get(role), ("streams", i, role)) for role in ("source", "estuary") if role in s},
            }
            if isinstance(s, dict)
            else s
            for i, s in enumerate(streams)
        ]
    return data, inherited


_MESSAGES = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
}


def _describe(exc: ValidationError, inherited: set[tuple[str | int, ...]]) -> list[str]:
    """Turn pydantic's errors into ``path: message`` lines a person can act on (inputs are never echoed)."""
    lines: list[str] = []
    errors = exc.errors(include_url=False)
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "too_short" and any(tuple(e["loc"])[: len(loc)] == loc != tuple(e["loc"]) for e in errors):
            continue  # pydantic also calls a list "too short" when its only items were invalid
        where = _format_loc(loc)
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if isinstance(ctx.get("error"), FieldProblems):
            for path, message in ctx["error"].problems:
                full = loc + tuple(path.split("."))
                note = f" (inherited from defaults.{full[-1]})" if full in inherited else ""
                lines.append(f"{_format_loc(loc)}.{path}: {message}{note}" if loc else f"{path}: {message}{note}")
            continue
        if kind == "value_error":
            message = str(ctx.get("error", error["msg"]))
        elif kind == "extra_forbidden":
            message = f"unknown field{_did_you_mean(str(loc[-1]))}"
        elif kind == "literal_error":
            message = f"must be {ctx.get('expected')}"
            if isinstance(error.get("input"), str) and len(error["input"]) < 40:
                message += f" (got {error['input']!r})"
        elif kind == "greater_than":
            message = "must be positive" if ctx.get("gt") == 0 else f"must be greater than {ctx.get('gt')}"
        elif kind == "greater_than_equal":
            message = f"must be at least {ctx.get('ge')}"
        elif kind == "less_than_equal":
            message = f"must be at most {ctx.get('le')}"
        elif kind == "too_short":
            message = "must not be empty"
        else:
            message = _MESSAGES.get(kind, error["msg"][:1].lower() + error["msg"][1:])
        if loc in inherited:
            message += f" (inherited from defaults.{loc[-1]})"
        lines.append(f"{where}: {message}")
    return lines


def _format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _did_you_mean(name: str) -> str:
    models = (MongoConfig, StreamConfig, TransformConfig, ReplicatorConfig)
    known = {"defaults", *(name for model in models for name in model.model_fields)}
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
