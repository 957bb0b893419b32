"""Read a JWT's claims without verifying it: for diagnostics only (test-auth, debug logs), never for trust.

The server verifies tokens; we only look at ``aud``/``tid``/``oid``/``exp`` to explain a refusal before it
happens. The token itself is never logged or returned.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, or ``{}`` when ``token`` is not one (some identity providers issue opaque tokens)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}
