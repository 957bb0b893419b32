"""The value types and validation helpers of the configuration models: durations, UUIDs, grouped problems."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import BeforeValidator, Field

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
