"""Keep secrets out of every log line, error message and report.

Two layers: values we format ourselves go through ``redact_uri`` (connection strings) before they reach a
message, and ``RedactingFilter`` scrubs whatever still slips into a log record (a driver exception that
quotes a URI, a JWT inside a third-party message). Defence in depth: the filter is not an excuse to format
secrets in the first place.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode

MASK = "***"

# Query options whose value is a secret (pymongo's TLS key password and anything named like a password/token).
_SECRET_OPTIONS = re.compile(r"(password|secret|token|sig|key)$", re.IGNORECASE)
# mongodb://user:pass@host or mongodb+srv://user@host: everything between "://" and the last "@" before the path.
_USERINFO = re.compile(r"(?P<scheme>mongodb(?:\+srv)?://)(?P<userinfo>[^/?#\s]*)@", re.IGNORECASE)
# A JWT: three base64url segments, the first two starting with '{"' encoded ("eyJ").
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# "password=..." / "AccountKey=..." style pairs in free text (connection strings of other Azure services too).
_KEY_VALUE = re.compile(
    r"(?P<key>password|pwd|accountkey|sharedaccesskey|client_secret|access_token|jwt)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>[^\s;&,'\"]+)",
    re.IGNORECASE,
)


def redact_uri(uri: str) -> str:
    """Return the connection string with its password (and secret query options) replaced by ``***``.

    The user name stays visible when there is one: it helps to debug "wrong user" without being a secret.
    """

    def _userinfo(match: re.Match[str]) -> str:
        user, has_password, _ = match.group("userinfo").partition(":")
        return f"{match.group('scheme')}{user}{':' + MASK if has_password else ''}@"

    head, sep, query = _USERINFO.sub(_userinfo, uri, count=1).partition("?")
    if not sep:
        return head
    pairs = [(k, MASK if _SECRET_OPTIONS.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return f"{head}?{urlencode(pairs, safe=':,/*')}"


def redact_text(text: str) -> str:
    """Scrub connection-string passwords, JWTs and ``key=value`` secrets from free text."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + _mask_userinfo(m.group("userinfo")) + "@", text)
    text = _JWT.sub(f"<token {MASK}>", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", text)


def _mask_userinfo(userinfo: str) -> str:
    user, has_password, _ = userinfo.partition(":")
    return f"{user}:{MASK}" if has_password else user


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message with ``redact_text``; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True
