"""Multi-document transactions, as far as a single-node test server needs them.

A command with ``lsid``, ``txnNumber`` and ``autocommit: false`` belongs to a transaction (``startTransaction:
true`` opens it). Its writes are applied at once, with an undo step each; its change events are held back until
``commitTransaction`` publishes them. ``abortTransaction``, a higher ``txnNumber`` on the same session, or
``endSessions`` takes the writes back and drops the events. There is no isolation: other sessions see the
uncommitted writes (never their events). A ``txnNumber`` without ``autocommit`` is a retryable write: executed
once more if retried (no de-duplication).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson.raw_bson import RawBSONDocument

from localdev.standins.faithful.errors import NO_SUCH_TRANSACTION, CommandError
from localdev.standins.faithful.store import Store, Transaction

_TRANSIENT = ("TransientTransactionError",)


def session_key(lsid: Any) -> bytes | None:
    """A session id as exact bytes (how the driver sends it in every command of the session)."""
    if isinstance(lsid, RawBSONDocument):
        return bytes(lsid.raw)
    return None


class Sessions:
    """The open transaction of each session; not thread-safe (the server holds its lock around it)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._open: dict[bytes, Transaction] = {}
        self._committed: dict[bytes, int] = {}

    def transaction_for(self, body: Mapping[str, Any]) -> Transaction | None:
        """The transaction a command runs in (``None``: outside any); opens one on ``startTransaction``."""
        key = session_key(body.get("lsid"))
        number = body.get("txnNumber")
        if key is None or number is None:
            return None
        current = self._open.get(key)
        if body.get("autocommit") is not False:
            if current is not None and number > current.number:
                self._abort(key)  # a retryable write with a newer number ends the open transaction
            return None
        if body.get("startTransaction"):
            if current is not None:
                if number <= current.number:
                    raise CommandError(
                        NO_SUCH_TRANSACTION, f"txnNumber {number} is not newer than the open {current.number}"
                    )
                self._abort(key)
            txn = Transaction(key, int(number))
            self._open[key] = txn
            return txn
        if current is not None and current.number == number:
            return current
        raise CommandError(
            NO_SUCH_TRANSACTION,
            f"Transaction with txnNumber {number} has been aborted or was never started",
            labels=_TRANSIENT,
        )

    def commit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        key, number = session_key(body.get("lsid")), body.get("txnNumber")
        if key is None or number is None:
            raise CommandError(NO_SUCH_TRANSACTION, "commitTransaction needs lsid and txnNumber")
        current = self._open.get(key)
        if current is not None and current.number == number:
            del self._open[key]
            self._store.publish(current.events)
            self._committed[key] = int(number)
            return {"ok": 1.0}
        if self._committed.get(key) == number:
            return {"ok": 1.0}  # a retried commit
        raise CommandError(NO_SUCH_TRANSACTION, f"Transaction {number} has been aborted", labels=_TRANSIENT)

    def abort(self, body: Mapping[str, Any]) -> dict[str, Any]:
        key, number = session_key(body.get("lsid")), body.get("txnNumber")
        current = self._open.get(key) if key is not None else None
        if key is None or current is None or current.number != number:
            raise CommandError(NO_SUCH_TRANSACTION, f"Transaction {number} is not open", labels=_TRANSIENT)
        self._abort(key)
        return {"ok": 1.0}

    def end(self, lsids: list[Any]) -> None:
        """``endSessions``: the open transactions of these sessions are aborted."""
        for lsid in lsids:
            key = session_key(lsid)
            if key is not None and key in self._open:
                self._abort(key)
            if key is not None:
                self._committed.pop(key, None)

    def _abort(self, key: bytes) -> None:
        txn = self._open.pop(key)
        self._store.rollback(txn)
