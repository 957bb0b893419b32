"""A MongoDB wire proxy that enforces MONGODB-OIDC in front of a server without authentication (nx-27017).

Real pymongo with ``authMechanism="MONGODB-OIDC"`` and an ``OIDC_CALLBACK`` talks to this proxy exactly as it
would to an Entra-enabled cluster: ``saslStart`` on ``$external`` with the payload ``{"jwt": token}`` is
answered here after checking the token's RS256 signature, expiry, audience, tenant, principal and revocation;
commands before authentication are refused with 13 (Unauthorized); once the token has expired or was revoked, or
when a test injects it, a command gets 391 (ReauthenticationRequired) and the connection must authenticate again.
Everything else is piped to the upstream server. Compression, speculative authentication and exhaust replies are
kept out of the conversation so that every request has exactly one reply the proxy can see.

This module holds the connection handling and the command line; the token checks and the record of
authentication attempts are in ``oidc_auth`` (``AuthEvent`` and the error codes are importable from here too).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from localdev.standins import wire
from localdev.standins.loop_server import LoopServer, close_writers
from localdev.standins.oidc_auth import (
    AUTHENTICATION_FAILED,
    REAUTHENTICATION_REQUIRED,
    UNAUTHORIZED,
    AuthEvent,
    AuthReason,
    OIDCAuthenticator,
    Session,
    error_reply,
)

__all__ = [
    "AUTHENTICATION_FAILED",
    "REAUTHENTICATION_REQUIRED",
    "UNAUTHORIZED",
    "UNSUPPORTED_OP_QUERY_COMMAND",
    "AuthEvent",
    "AuthReason",
    "OIDCProxy",
    "main",
]

_log = logging.getLogger(__name__)

# Server error code (src/mongo/base/error_codes.yml); the authentication ones are in oidc_auth.
UNSUPPORTED_OP_QUERY_COMMAND = 352

_HELLO_COMMANDS = frozenset({"hello", "isMaster", "ismaster"})
# Commands a real server answers on a connection that has not authenticated. ping is among them on mongod
# (it does not require auth), so a proxy refusing it would be stricter than the real thing.
_NO_AUTH_COMMANDS = _HELLO_COMMANDS | {"saslStart", "saslContinue", "buildInfo", "buildinfo", "endSessions", "ping"}
# Handshake fields the proxy removes: compression would hide messages from it (OP_COMPRESSED), and
# speculative authentication would let the upstream answer an authentication that must happen here.
_STRIPPED_HELLO_FIELDS = ("compression", "speculativeAuthenticate")
_CLEARED_REQUEST_FLAGS = wire.CHECKSUM_PRESENT | wire.MORE_TO_COME | wire.EXHAUST_ALLOWED


class OIDCProxy(LoopServer):
    """Listens on loopback, authenticates MONGODB-OIDC itself, forwards the rest to ``upstream``.

    Runs its own event loop in a daemon thread; counters, events and injections are thread-safe.
    """

    thread_name = "oidc-proxy"

    def __init__(
        self,
        *,
        upstream: tuple[str, int],
        public_key_pem: bytes,
        audience: str,
        tenant_id: str | None = None,
        allowed_principals: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream = upstream
        self._auth = OIDCAuthenticator(
            public_key_pem=public_key_pem,
            audience=audience,
            tenant_id=tenant_id,
            allowed_principals=allowed_principals,
            clock=clock,
        )
        super().__init__(host=host, port=port)
        self._clock = clock
        self._lock = threading.Lock()
        self._reauth_pending = 0
        self._reauth_commands: frozenset[str] | None = None
        self._reauth_sent = 0
        self._errors_pending: dict[str, tuple[int, str, int]] = {}

    @property
    def audience(self) -> str:
        """The ``aud`` a token must name."""
        return self._auth.audience

    @property
    def tenant_id(self) -> str | None:
        """The ``tid`` a token must carry (any when ``None``)."""
        return self._auth.tenant_id

    @property
    def allowed_principals(self) -> frozenset[str] | None:
        """The registered principals (object ids); every principal when ``None``."""
        return self._auth.allowed_principals

    @property
    def auth_events(self) -> list[AuthEvent]:
        """Every authentication attempt, oldest first (a copy)."""
        return self._auth.events

    @property
    def reauth_sent(self) -> int:
        """How many 391 replies were sent (expired tokens and injections)."""
        with self._lock:
            return self._reauth_sent

    @property
    def sasl_starts(self) -> int:
        """How many ``saslStart`` commands arrived."""
        return self._auth.sasl_starts

    def inject_reauth(self, count: int = 1, *, commands: Collection[str] | None = None) -> None:
        """Answer the next ``count`` authenticated commands (only those named in ``commands``, if given) with 391.

        Replaces any injection still pending.
        """
        with self._lock:
            self._reauth_pending = count
            self._reauth_commands = None if commands is None else frozenset(commands)

    def revoke_tokens_issued_before(self, issued_before: float) -> None:
        """Revoke every token with ``iat < issued_before``: ``saslStart`` with one fails with 18, and a connection
        that authenticated with one gets 391 on its next command (the client must fetch a fresh token)."""
        self._auth.revoke_issued_before(issued_before)

    def inject_error(self, command: str, code: int, message: str, *, count: int = 1) -> None:
        """Answer the next ``count`` authenticated ``command`` requests with error ``code`` instead of forwarding
        them: how tests meet server errors nx-27017 never produces (286 ChangeStreamHistoryLost, say)."""
        with self._lock:
            self._errors_pending[command] = (code, message, count)

    def _started(self) -> None:
        _log.debug("OIDC proxy on %s:%d -> %s:%d", *self.address, *self.upstream)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream = await asyncio.open_connection(*self.upstream)
            upstream_writer = upstream[1]
            session = Session()
            while True:
                request = await wire.read_message(reader)
                reply = await self._dispatch(request, session, upstream)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # either side hung up: end this connection quietly, as a server does
        except (OSError, wire.WireError) as exc:
            _log.warning("OIDC proxy closes a connection: %s", exc)
        finally:
            self._writers.discard(writer)
            await close_writers(writer, upstream_writer)

    async def _dispatch(
        self,
        request: wire.Message,
        session: Session,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> bytes | None:
        """Answer one client message; ``None`` when the client expects no reply (moreToCome)."""
        if request.op_code == wire.OP_MSG:
            msg = wire.decode_op_msg(request)
            answer = self._check_command(msg.command_name, msg.body, session)
            if answer is None:
                body = _strip_hello(msg.body) if msg.command_name in _HELLO_COMMANDS else msg.body
                flags = msg.flags & ~_CLEARED_REQUEST_FLAGS
                forwarded = request.raw
                if body is not msg.body or flags != msg.flags:
                    forwarded = wire.encode_op_msg(
                        body, request_id=request.request_id, flags=flags, sequences=msg.sequences
                    )
                reply = await _round_trip(upstream, forwarded)
            else:
                reply = wire.encode_op_msg(answer, request_id=wire.next_request_id(), response_to=request.request_id)
            # moreToCome from the client: it reads no reply. Upstream got the flag cleared (nx-27017 parses that
            # bit as a checksum flag) and answered; that answer is dropped here.
            return None if msg.flags & wire.MORE_TO_COME else reply
        if request.op_code == wire.OP_QUERY:
            query = wire.decode_op_query(request)
            if query.namespace.endswith(".$cmd") and query.command_name in _HELLO_COMMANDS:
                stripped = dataclasses.replace(query, query=_strip_hello(query.query))
                return await _round_trip(upstream, wire.encode_op_query(stripped, request_id=request.request_id))
            # Servers since 5.1 accept OP_QUERY only for the handshake.
            answer = error_reply(
                UNSUPPORTED_OP_QUERY_COMMAND, "UnsupportedOpQueryCommand", "OP_QUERY is for hello only"
            )
            return wire.encode_op_reply(answer, request_id=wire.next_request_id(), response_to=request.request_id)
        raise wire.WireError(f"unsupported opcode {request.op_code}")

    def _check_command(self, name: str, body: Mapping[str, Any], session: Session) -> dict[str, Any] | None:
        """The proxy's own answer to a command, or ``None`` to forward it."""
        if name == "saslStart":
            return self._auth.sasl_start(body, session)
        if name == "saslContinue":
            # Authentication finishes in one step (done: true), so a continuation has nothing to continue.
            return self._auth.refuse(session, "no conversation", None)
        if name in _NO_AUTH_COMMANDS:
            return None
        if session.principal is None and not session.was_authenticated:
            return error_reply(UNAUTHORIZED, "Unauthorized", f"command {name} requires authentication")
        if self._reauth_due(name, session):
            session.principal = None
            return error_reply(REAUTHENTICATION_REQUIRED, "ReauthenticationRequired", "Reauthentication required")
        return self._injected_error(name)

    def _injected_error(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            if name not in self._errors_pending:
                return None
            code, message, count = self._errors_pending[name]
            if count <= 1:
                del self._errors_pending[name]
            else:
                self._errors_pending[name] = (code, message, count - 1)
        return error_reply(code, "InjectedError", message)

    def _reauth_due(self, name: str, session: Session) -> bool:
        lost = session.principal is None or self._auth.revoked(session) or self._clock() >= session.expires_at
        with self._lock:
            injected = not lost and self._reauth_pending > 0
            injected = injected and (self._reauth_commands is None or name in self._reauth_commands)
            if injected:
                self._reauth_pending -= 1
            due = injected or lost
            if due:
                self._reauth_sent += 1
        return due


def _strip_hello(command: dict[str, Any]) -> dict[str, Any]:
    """The handshake without the fields the proxy must keep away from upstream (same object if none)."""
    if not any(field in command for field in _STRIPPED_HELLO_FIELDS):
        return command
    return {key: value for key, value in command.items() if key not in _STRIPPED_HELLO_FIELDS}


async def _round_trip(upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], message: bytes) -> bytes:
    """Send one request upstream and return its single reply (exhaustAllowed was cleared, so there is one)."""
    reader, writer = upstream
    writer.write(message)
    await writer.drain()
    return (await wire.read_message(reader)).raw


def _parse_address(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not (separator and host and port.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; print the proxy's connection string as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m localdev.standins.oidc_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, type=_parse_address, metavar="HOST:PORT")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--audience", required=True, help="expected aud claim (the token resource)")
    parser.add_argument("--public-key-file", required=True, type=Path, help="PEM key that signs the tokens")
    parser.add_argument("--tenant", help="expected tid claim")
    parser.add_argument("--allow", action="append", metavar="OBJECT_ID", help="registered principal (repeatable)")
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the loop thread starts, so it inherits the mask and sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    proxy = OIDCProxy(
        upstream=args.upstream,
        public_key_pem=args.public_key_file.read_bytes(),
        audience=args.audience,
        tenant_id=args.tenant,
        allowed_principals=args.allow,
        host=args.host,
        port=args.listen_port,
    )
    with proxy:
        print(json.dumps({"uri": proxy.uri}), flush=True)
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
