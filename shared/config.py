"""Configuration: the pydantic models are the single source of truth for fields, defaults and validation.

A config file (YAML or JSON) has ``checkpoints:`` (where positions are stored), ``streams:`` (each with a
``name``, a ``source:`` and an ``estuary:``) and an optional ``defaults:`` block whose fields every endpoint
inherits. Every endpoint is one flat ``MongoConfig``. String values may reference app settings / environment
variables as ``${NAME}`` so that connection strings with passwords can live in Key Vault references instead of
the file.

Configuration is built by ``load_config`` / ``get_config`` when first needed, never at import time: a
validation error during import would make every function disappear from the Functions host.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shared import mongo_uri
from shared.auth.scopes import DOCUMENTDB_SCOPE, scope_problem
from shared.errors import ConfigError

CONFIG_SETTING = "REPLICATOR_CONFIG"

AuthMethod = Literal["connection_string", "entra"]
CredentialKind = Literal["auto", "managed_identity", "developer"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BAD_DATABASE_CHARS = set('/\\. "$*<>:|?')


def parse_duration(value: object) -> object:
    """Accept ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '30s', '5m' or a number of seconds")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"must be a duration such as '30s', '5m', '1h' or a number of seconds (got {value!r})")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class _FieldProblems(ValueError):  # noqa: N818 (carries problems through pydantic; never reaches a user)
    """Several ``field: message`` problems found by one model validator, paths relative to that model."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))
        self.problems = problems


def _check_uuid(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"must be a UUID ({what}, e.g. 00000000-0000-0000-0000-000000000000)") from None


class MongoConfig(BaseModel):
    """One MongoDB connection (source, estuary or checkpoint store), flat as in the feature list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_uri: str = Field(
        description="mongodb:// or mongodb+srv:// URI. With auth_method 'entra' it must carry no user or password."
    )
    database: str | None = Field(None, description="Database name (required for stream endpoints and checkpoints).")
    collection: str | None = Field(None, description="Collection name (required for stream endpoints).")
    auth_method: AuthMethod = Field(
        "connection_string",
        description="'connection_string' (credentials in the URI, the default) or 'entra' (MONGODB-OIDC with a "
        "Microsoft Entra ID token from the managed identity or, locally, your developer login).",
    )
    tenant_id: str | None = Field(None, description="Entra directory (tenant) id; required for 'entra'.")
    credential: CredentialKind = Field(
        "auto",
        description="Where 'entra' tokens come from: 'managed_identity', 'developer' (az / azd login) or 'auto' "
        "(managed identity inside Azure Functions / App Service, developer login elsewhere).",
    )
    client_id: str | None = Field(
        None,
        description="Client id of a user-assigned managed identity; omit for the system-assigned identity.",
    )
    scopes: tuple[str, ...] = Field(
        (DOCUMENTDB_SCOPE,),
        description="Token scope (exactly one). Azure DocumentDB expects the ossrdbms-aad scope (the default).",
    )
    refresh_before_expiry: Duration = Field(
        300.0, le=3600.0, description="Fetch a new token when the cached one expires within this time."
    )
    auth_timeout: Duration = Field(30.0, description="Upper bound of one token request (connect and read).")
    retry_max_attempts: int = Field(3, ge=1, le=10, description="Token requests per fetch, first one included.")
    retry_initial_delay: Duration = Field(1.0, description="Backoff before the first retry of a token request.")
    retry_max_delay: Duration = Field(10.0, description="Upper bound of the backoff between token requests.")
    retry_multiplier: float = Field(2.0, ge=1.0, le=10.0, description="Backoff growth factor between retries.")

    @field_validator("connection_uri")
    @classmethod
    def _uri_shape(cls, uri: str) -> str:
        if not mongo_uri.has_scheme(uri):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        if any(ch.isspace() for ch in uri):
            raise ValueError("must not contain spaces (percent-encode them as %20)")
        return uri

    @field_validator("tenant_id")
    @classmethod
    def _tenant_uuid(cls, value: str | None) -> str | None:
        return _check_uuid(value, "the Entra directory (tenant) id")

    @field_validator("client_id")
    @classmethod
    def _client_uuid(cls, value: str | None) -> str | None:
        return _check_uuid(value, "the managed identity's client id, not its object id or name")

    @field_validator("database")
    @classmethod
    def _database_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or set(value) & _BAD_DATABASE_CHARS or len(value) > 63):
            raise ValueError('must be 1-63 characters without / \\ . space " $ * < > : | ?')
        return value

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "$" in value or value.startswith("system.")):
            raise ValueError("must be non-empty, without '$', and not a system.* collection")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        if not scopes:
            raise ValueError(f"must not be empty (Azure DocumentDB: ['{DOCUMENTDB_SCOPE}'])")
        if len(scopes) > 1:
            raise ValueError("must hold exactly one scope: an Entra token is issued for a single audience")
        problem = scope_problem(scopes[0])
        if problem:
            raise ValueError(problem)
        return scopes

    @model_validator(mode="after")
    def _auth_rules(self) -> MongoConfig:
        problems = list(self._entra_problems() if self.auth_method == "entra" else self._uri_auth_problems())
        if self.retry_max_delay < self.retry_initial_delay:
            problems.append(("retry_max_delay", "must not be smaller than retry_initial_delay"))
        if problems:
            raise _FieldProblems(problems)
        return self

    def _entra_problems(self) -> Iterator[tuple[str, str]]:
        if self.tenant_id is None:
            yield "tenant_id", "is required when auth_method is 'entra' (your Entra directory id)"
        if mongo_uri.has_credentials(self.connection_uri):
            yield (
                "connection_uri",
                "must not contain a user name or password when auth_method is 'entra' (the managed identity's "
                "token is the credential); remove the 'user:password@' part",
            )
        set_by_us = {"authmechanism", "authmechanismproperties", "authsource"} & mongo_uri.options(
            self.connection_uri
        ).keys()
        if set_by_us:
            yield (
                "connection_uri",
                f"remove {', '.join(sorted(set_by_us))}: auth_method 'entra' sets MONGODB-OIDC with the "
                "replicator's token provider itself",
            )

    def _uri_auth_problems(self) -> Iterator[tuple[str, str]]:
        if mongo_uri.options(self.connection_uri).get("authmechanism", "").upper() == "MONGODB-OIDC":
            yield (
                "connection_uri",
                "authMechanism=MONGODB-OIDC in the URI uses pymongo's built-in Azure support, which calls the VM "
                "metadata endpoint that Azure Functions does not offer; set auth_method: entra instead",
            )

    @property
    def scope(self) -> str:
        return self.scopes[0]

    @property
    def token_settings(self) -> tuple[float, float, int, float, float, float]:
        """Settings of the token provider; endpoints sharing an identity must agree on them."""
        return (
            self.refresh_before_expiry,
            self.auth_timeout,
            self.retry_max_attempts,
            self.retry_initial_delay,
            self.retry_max_delay,
            self.retry_multiplier,
        )


class StreamConfig(BaseModel):
    """One replicated collection: source change stream -> estuary collection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique stream name: letters, digits, '_', '-', '.'; at most 63 characters.")
    enabled: bool = Field(True, description="Disabled streams are validated but not replicated.")
    source: MongoConfig = Field(description="The collection whose change stream is read.")
    estuary: MongoConfig = Field(description="The collection the changes are applied to.")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _STREAM_NAME.match(name):
            raise ValueError("must be 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit")
        return name

    @model_validator(mode="after")
    def _endpoints(self) -> StreamConfig:
        problems = [
            (f"{role}.{field}", f"is required for a stream {role}")
            for role, endpoint in (("source", self.source), ("estuary", self.estuary))
            for field in ("database", "collection")
            if getattr(endpoint, field) is None
        ]
        if not problems and _same_collection(self.source, self.estuary):
            problems.append(("estuary", "is the source collection itself; replicating onto itself would loop"))
        if problems:
            raise _FieldProblems(problems)
        return self


class ReplicatorConfig(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoints: MongoConfig = Field(description="Where stream positions (resume tokens, leases) are stored.")
    streams: tuple[StreamConfig, ...] = Field(min_length=1, description="The streams to replicate.")

    @field_validator("checkpoints")
    @classmethod
    def _checkpoint_database(cls, checkpoints: MongoConfig) -> MongoConfig:
        if checkpoints.database is None:
            raise _FieldProblems([("database", "is required for the checkpoint store")])
        return checkpoints

    @model_validator(mode="after")
    def _cross_stream_rules(self) -> ReplicatorConfig:
        problems = [*self._duplicate_names(), *self._token_setting_conflicts()]
        if problems:
            raise _FieldProblems(problems)
        return self

    def endpoints(self) -> Iterator[tuple[str, MongoConfig]]:
        """Every connection with its config path, checkpoints first."""
        yield "checkpoints", self.checkpoints
        for i, stream in enumerate(self.streams):
            yield f"streams[{i}].source", stream.source
            yield f"streams[{i}].estuary", stream.estuary

    def _duplicate_names(self) -> Iterator[tuple[str, str]]:
        first: dict[str, int] = {}
        for i, stream in enumerate(self.streams):
            if stream.name in first:
                yield (
                    f"streams[{i}].name",
                    f"duplicate stream name '{stream.name}' (also streams[{first[stream.name]}])",
                )
            first.setdefault(stream.name, i)

    def _token_setting_conflicts(self) -> Iterator[tuple[str, str]]:
        seen: dict[tuple[str | None, str | None, str], tuple[str, MongoConfig]] = {}
        for path, endpoint in self.endpoints():
            if endpoint.auth_method != "entra":
                continue
            key = (endpoint.tenant_id, endpoint.client_id, endpoint.scope)
            first_path, first = seen.setdefault(key, (path, endpoint))
            if first.token_settings != endpoint.token_settings:
                yield (
                    path,
                    f"token settings (refresh_before_expiry, auth_timeout, retry_*) differ from {first_path}, which "
                    "uses the same identity and scope; they share one token cache, so set them alike (the "
                    "'defaults:' block is the easy way)",
                )


def _same_collection(a: MongoConfig, b: MongoConfig) -> bool:
    return (mongo_uri.hosts(a.connection_uri), a.database, a.collection) == (
        mongo_uri.hosts(b.connection_uri),
        b.database,
        b.collection,
    )


# ---------------------------------------------------------------------------------------------- loading


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

    data["checkpoints"] = _merge(data.get("checkpoints"), ("checkpoints",)) if "checkpoints" in data else None
    if data["checkpoints"] is None:
        del data["checkpoints"]
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
        if isinstance(ctx.get("error"), _FieldProblems):
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
    known = {
        *MongoConfig.model_fields,
        *StreamConfig.model_fields,
        *ReplicatorConfig.model_fields,
        "defaults",
    }
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
