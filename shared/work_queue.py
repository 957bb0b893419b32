"""The queue message contract between the timer fan-out and the queue worker.

One message asks for one pass of one stream, or of some collections of a scoped stream. The timer writes them
through the Functions queue output binding; the worker reads them through the queue trigger. Both ends live in
this module so the format cannot drift apart, and both sides go through the host, which base64-encodes on the way in
and decodes on the way out (host.json keeps the default ``messageEncoding``): the text here is what the application
sees.

Why a queue between them, rather than the timer running the passes: each stream gets its own invocation (a slow
stream cannot delay the others), a failed pass is retried by the host and finally parked in ``<queue>-poison``,
and passes spread over instances.

The format is compact JSON, ``{"v":1,"stream":"orders","correlation_id":"...","enqueued_at":1767225600.0}``:

* ``v``: the format version, so a future change is refused loudly instead of misread while old and new
  instances of the app run side by side during a deployment (a message without it is read as version 1, which
  keeps a hand-written message short);
* ``stream``: the stream to run;
* ``collections`` (only for a scoped stream, omitted otherwise): the collections this pass serves, at most
  ``collections_per_pass`` (``database.collection`` in a cluster scope), so one tick of a stream with hundreds of
  collections is a few messages, not hundreds;
* ``correlation_id``: the timer invocation's id, so every pass of one tick shares it in the logs;
* ``enqueued_at``: Unix seconds when the timer wrote it, to log how long the message waited.

A message that does not follow the format raises ``BadMessageError``: retrying cannot repair it, so the worker
logs it and drops it rather than letting the host retry it into the poison queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import ReplicatorError
from shared.redaction import redact_text

if TYPE_CHECKING:
    from shared.config import ReplicatorConfig

FORMAT_VERSION = 1
_LATEST_TIME = 1e11  # Unix seconds, year 5138: a bound that refuses nonsense, not a policy
_PREVIEW_CHARS = 200  # of a bad body, in the error message: enough to recognise it, never a whole payload
_HINT = (
    'messages are written by the timer function; one put on the queue by hand must be JSON like {"stream": "<name>", '
    '"correlation_id": "<any text>", "enqueued_at": <Unix seconds>}'
)


class BadMessageError(ReplicatorError):
    """A queue message that no retry can fix (not JSON, missing or mistyped fields): log it and drop it."""


@dataclass(frozen=True)
class PassRequest:
    """A request for one pass of ``stream``, made by the timer invocation ``correlation_id`` at ``enqueued_at``."""

    stream: str
    correlation_id: str
    enqueued_at: float
    collections: tuple[str, ...] = ()  # of a scoped stream; empty for a single-collection stream

    def to_message(self) -> str:
        """The queue message text (compact JSON; the host base64-encodes it on the wire)."""
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "stream": self.stream,
            "correlation_id": self.correlation_id,
            "enqueued_at": self.enqueued_at,
        }
        if self.collections:
            body["collections"] = list(self.collections)
        return json.dumps(body, separators=(",", ":"))


def pass_requests(config: ReplicatorConfig, *, correlation_id: str, now: float) -> list[str]:
    """One message per enabled stream that runs as one pass (one collection, or one change stream for a database or
    cluster), in configuration order; disabled streams get none. A scoped stream's per-collection passes are
    planned by ``discovery`` at every tick."""
    return [
        PassRequest(stream.name, correlation_id, now).to_message()
        for stream in config.streams
        if stream.enabled and (stream.scope == "collection" or stream.cursor == "single")
    ]


def parse_pass_request(body: str | bytes) -> PassRequest:
    """Read a message written by ``pass_requests``; raise ``BadMessageError`` saying what is wrong with it."""
    if isinstance(body, bytes):
        raw, body = body, body.decode("utf-8", errors="replace")
        if "\ufffd" in body and "\ufffd".encode() not in raw:
            raise _bad("is not UTF-8 text", body)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _bad(f"is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", body) from None
    except (ValueError, RecursionError) as exc:  # an integer over 4300 digits, or nesting past the recursion limit
        raise _bad(f"is not JSON this app can read ({type(exc).__name__})", body) from None
    if not isinstance(data, dict):
        raise _bad(f"must be a JSON object, not {_json_type(data)}", body)
    version = data.get("v", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise _bad(
            f"has format version {json.dumps(version)[:20]}, but this app reads version {FORMAT_VERSION} "
            "(written by a newer or older deployment?)",
            body,
        )
    problems = [
        *_text_problem(data, "stream"),
        *_text_problem(data, "correlation_id"),
        *_time_problem(data, "enqueued_at"),
        *_names_problem(data, "collections"),
    ]
    if problems:
        raise _bad("; ".join(problems), body)
    collections = tuple(data.get("collections") or ())
    return PassRequest(data["stream"], data["correlation_id"], float(data["enqueued_at"]), collections)


def _text_problem(data: dict[str, Any], field: str) -> list[str]:
    if field not in data:
        return [f"'{field}' is missing"]
    value = data[field]
    if not isinstance(value, str) or not value.strip():
        return [f"'{field}' must be a non-empty string, not {_json_type(value)}"]
    return []


def _names_problem(data: dict[str, Any], field: str) -> list[str]:
    value = data.get(field, [])
    if not isinstance(value, list):
        return [f"'{field}' must be a list of collection names, not {_json_type(value)}"]
    if not all(isinstance(v, str) and v.strip() for v in value):
        return [f"'{field}' must hold only non-empty collection names"]
    return []


def _time_problem(data: dict[str, Any], field: str) -> list[str]:
    if field not in data:
        return [f"'{field}' is missing"]
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [f"'{field}' must be a number of Unix seconds, not {_json_type(value)}"]
    if not 0 <= value < _LATEST_TIME:  # also refuses NaN and infinities; exact for huge integers (no overflow)
        return [f"'{field}' must be Unix seconds between 0 and {_LATEST_TIME:.0e}, not {str(value)[:30]}"]
    return []


def _json_type(value: Any) -> str:
    """How a JSON reader would name the value's type (``an empty string`` for the empty string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    return "an array" if isinstance(value, list) else "an object"


def _bad(problem: str, body: str) -> BadMessageError:
    """The error for a bad body: what is wrong, then the start of the body (scrubbed of secrets, never all of it)."""
    preview = redact_text(body[: _PREVIEW_CHARS * 4])[:_PREVIEW_CHARS]
    more = f"... ({len(body)} characters)" if len(body) > _PREVIEW_CHARS else ""
    return BadMessageError(f"queue message {problem}: {preview!r}{more}", hint=_HINT)
