"""The value types, validation helpers and leaf models of the configuration: durations, UUIDs, grouped problems,
the field mapping."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


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


class FieldProblems(ValueError):  # noqa: N818 (carries problems through pydantic; never reaches a user)
    """Several ``field: message`` problems found by one model validator, paths relative to that model.

    ``config_loader`` unpacks them into one ``path: message`` line each.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))
        self.problems = problems


def check_uuid(value: str | None, what: str) -> str | None:
    """The value in canonical UUID form (``None`` stays ``None``); a clear error when it is not a UUID."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"must be a UUID ({what}, e.g. 00000000-0000-0000-0000-000000000000)") from None


class TransformConfig(BaseModel):
    """Field mapping applied to each document before it is written to the estuary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rename: dict[str, str] = Field(default_factory=dict, description="Top-level fields to rename: {old: new}.")
    drop: tuple[str, ...] = Field((), description="Top-level fields to leave out of the estuary.")

    @model_validator(mode="after")
    def _rules(self) -> TransformConfig:
        names = [*self.rename, *self.rename.values(), *self.drop]
        problems = [
            (n, "must be a top-level field name (no '.', not starting with '$')") for n in names if _bad_field(n)
        ]
        if "_id" in names:
            problems.append(("_id", "cannot be renamed or dropped: the estuary is keyed by it"))
        if problems:
            raise FieldProblems(problems)
        return self


def _bad_field(name: str) -> bool:
    return not name or "." in name or name.startswith("$")
