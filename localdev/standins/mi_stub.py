"""A local stand-in for the App Service / Azure Functions managed identity endpoint.

When ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` are set, azure-identity's ``ManagedIdentityCredential``
(through MSAL) calls ``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource>[&client_id=<id>]``
with the header ``X-IDENTITY-HEADER``. This stub answers that contract with RS256 JWTs shaped like Entra v1
app tokens, signed by a key generated per instance, so the real credential code and the real pymongo
MONGODB-OIDC path can run on a machine without Azure. Failures and slow answers can be injected.
Contract: https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import secrets
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localdev.standins.service import Service

_log = logging.getLogger(__name__)

API_VERSION = "2019-08-01"
TOKEN_PATH = "/msi/token"  # noqa: S105 - a URL path, not a secret
# The message App Service returns for an identity that is not assigned to the app.
UNKNOWN_IDENTITY_MESSAGE = (
    "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId/PrincipalId."
)


@dataclass(frozen=True)
class TokenRequest:
    """What one call to the endpoint asked for and the status it got."""

    resource: str | None
    client_id: str | None
    status: int


@dataclass(frozen=True)
class _Failure:
    status: int
    message: str
    retry_after: int | None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


class _Server(ThreadingHTTPServer):
    """Carries the stub to the request handler, which http.server instantiates per request."""

    def __init__(self, address: tuple[str, int], stub: ManagedIdentityStub) -> None:
        super().__init__(address, _Handler)
        self.stub = stub

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a client that gave up on a delayed answer is expected here.
        _log.debug("managed identity stub: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        reply = self.server.stub._answer(self.path, self.headers.get("X-IDENTITY-HEADER"))
        body = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server writes every request to stderr; keep it out of test output unless asked for.
        _log.debug("%s %s", self.address_string(), format % args)


class ManagedIdentityStub(Service):
    """The managed identity endpoint of an app with the given identities, served on loopback.

    ``identities`` maps a user-assigned identity's client id to its principal (object) id; the key ``None``
    stands for the system-assigned identity. Counters and injections are safe to use from any thread.
    """

    def __init__(
        self,
        *,
        tenant_id: str,
        identities: Mapping[str | None, str],
        token_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.tenant_id = tenant_id
        self.token_lifetime = token_lifetime
        self._identities = dict(identities)
        self._clock = clock
        self._address = (host, port)
        self.identity_header = secrets.token_urlsafe(32)
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_key = self._private_key.public_key()
        self.public_key_pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:15]).decode()
        # Entra gives a system-assigned identity an application id too; tokens carry it as appid.
        self.system_assigned_client_id = str(uuid.uuid4())
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._issued: list[str] = []
        self._failures: deque[_Failure] = deque()
        self._delays: deque[float] = deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The value for ``IDENTITY_ENDPOINT`` (the port is known once started)."""
        host, port = self._server.server_address[:2] if self._server else self._address
        return f"http://{host!s}:{port}{TOKEN_PATH}"

    def environ(self) -> dict[str, str]:
        """The environment the Functions host would give the app."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.identity_header}

    @property
    def requests(self) -> list[TokenRequest]:
        """Every request that reached the token path, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """Number of requests that reached the token path."""
        with self._lock:
            return len(self._requests)

    @property
    def issued_tokens(self) -> list[str]:
        """Tokens served over HTTP, oldest first (tokens from ``mint`` are not included)."""
        with self._lock:
            return list(self._issued)

    def fail_next(
        self, count: int, status: int, *, retry_after: int | None = None, message: str = "Injected failure"
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``Retry-After`` when given)."""
        with self._lock:
            self._failures.extend([_Failure(status, message, retry_after)] * count)

    def delay_next(self, count: int, seconds: float) -> None:
        """Hold the next ``count`` responses back for ``seconds``, to provoke client read timeouts."""
        with self._lock:
            self._delays.extend([seconds] * count)

    def mint(
        self, *, resource: str, client_id: str | None = None, lifetime: float | None = None, **overrides: Any
    ) -> str:
        """Sign a token for a configured identity without an HTTP round trip.

        ``overrides`` replace claims (an override of ``None`` removes the claim), which is how tests craft
        tokens with a wrong audience, tenant or principal. A negative ``lifetime`` gives an expired token.
        """
        return self._sign(resource, client_id, lifetime, overrides)[0]

    def _sign(
        self, resource: str, client_id: str | None, lifetime: float | None, overrides: Mapping[str, Any]
    ) -> tuple[str, int]:
        """Return the token and its ``exp``."""
        if client_id not in self._identities:
            raise ValueError(f"identity {client_id or 'system-assigned'!r} is not configured on this stub")
        now = int(self._clock())
        expires_on = int(now + (self.token_lifetime if lifetime is None else lifetime))
        principal = self._identities[client_id]
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": expires_on,
            "tid": self.tenant_id,
            "oid": principal,
            "sub": principal,
            "appid": client_id or self.system_assigned_client_id,
            "idtyp": "app",
            "ver": "1.0",
            # Entra stamps every token with a unique id; without it two tokens minted in one second are identical.
            "uti": secrets.token_urlsafe(16),
        }
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not None}
        token = jwt.encode(claims, self._private_key, algorithm="RS256", headers={"kid": self.key_id})
        return token, expires_on

    def _answer(self, path: str, identity_header: str | None) -> _Reply:
        """Decide the response to one GET; called from the server's request threads."""
        url = urlsplit(path)
        if url.path.rstrip("/") != TOKEN_PATH:
            return _Reply(HTTPStatus.NOT_FOUND, {"statusCode": 404, "message": "Not found"})
        query = {name: values[-1] for name, values in parse_qs(url.query).items()}
        resource, client_id = query.get("resource"), query.get("client_id")
        with self._lock:
            delay = self._delays.popleft() if self._delays else 0.0
            failure = self._failures.popleft() if self._failures else None
        if delay:
            time.sleep(delay)
        if failure is not None:
            headers = () if failure.retry_after is None else (("Retry-After", str(failure.retry_after)),)
            reply = _Reply(failure.status, {"statusCode": failure.status, "message": failure.message}, headers)
        else:
            reply = self._validate_and_issue(query, identity_header)
        with self._lock:
            self._requests.append(TokenRequest(resource, client_id, int(reply.status)))
            if "access_token" in reply.body:
                self._issued.append(reply.body["access_token"])
        _log.debug("token request resource=%s client_id=%s -> %d", resource, client_id, reply.status)
        return reply

    def _validate_and_issue(self, query: Mapping[str, str], identity_header: str | None) -> _Reply:
        if identity_header is None or not secrets.compare_digest(identity_header, self.identity_header):
            return _error(HTTPStatus.UNAUTHORIZED, "X-IDENTITY-HEADER is missing or incorrect.")
        if query.get("api-version") != API_VERSION:
            return _error(HTTPStatus.BAD_REQUEST, f"Unsupported api-version; this endpoint serves {API_VERSION}.")
        resource = query.get("resource")
        if not resource:
            return _error(HTTPStatus.BAD_REQUEST, "Required query parameter 'resource' is missing.")
        client_id = query.get("client_id")
        # Selecting an identity by object_id / mi_res_id is not modelled: refuse rather than fall back to the
        # system-assigned identity, which would silently hand out the wrong principal.
        if client_id not in self._identities or "object_id" in query or "mi_res_id" in query:
            return _error(HTTPStatus.BAD_REQUEST, UNKNOWN_IDENTITY_MESSAGE)
        token, expires_on = self._sign(resource, client_id, None, {})
        return _Reply(
            HTTPStatus.OK,
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id or self.system_assigned_client_id,
            },
        )

    def start(self) -> ManagedIdentityStub:
        """Serve in a daemon thread; a no-op when already serving."""
        if self._server is None:
            self._server = _Server(self._address, self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="mi-stub", daemon=True
            )
            self._thread.start()
            _log.debug("managed identity stub serving at %s", self.endpoint)
        return self

    def stop(self) -> None:
        """Stop serving and release the port; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _error(status: HTTPStatus, message: str) -> _Reply:
    return _Reply(status, {"statusCode": int(status), "message": message})


def _parse_identity(text: str) -> tuple[str, str]:
    client_id, separator, object_id = text.partition("=")
    if not (separator and client_id and object_id):
        raise argparse.ArgumentTypeError(f"expected CLIENT_ID=OBJECT_ID, got {text!r}")
    return client_id, object_id


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; print the app settings to use as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m localdev.standins.mi_stub", description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True, help="tenant id put into the tokens (tid, iss)")
    parser.add_argument("--identity", action="append", type=_parse_identity, default=[], metavar="CLIENT_ID=OBJECT_ID")
    parser.add_argument("--system-assigned", metavar="OBJECT_ID", help="principal id of a system-assigned identity")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-lifetime", type=float, default=3600.0, metavar="SECONDS")
    parser.add_argument("--public-key-out", type=Path, help="write the token signing key (PEM) here")
    args = parser.parse_args(argv)
    identities: dict[str | None, str] = dict(args.identity)
    if args.system_assigned:
        identities[None] = args.system_assigned
    if not identities:
        parser.error("configure at least one --identity or --system-assigned")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server thread starts, so it inherits the mask and sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    stub = ManagedIdentityStub(
        tenant_id=args.tenant,
        identities=identities,
        token_lifetime=args.token_lifetime,
        host=args.host,
        port=args.port,
    )
    with stub:
        if args.public_key_out:
            args.public_key_out.write_bytes(stub.public_key_pem)
        print(json.dumps(stub.environ()), flush=True)
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
