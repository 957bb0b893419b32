"""A scoped stream's rules, without I/O: which collections it covers, what each is called, where each goes.

A stream whose source names no ``collection`` covers a whole database; one whose source names no ``database`` either
covers the whole cluster. Each collection it covers is a *member*: ``orders`` in a database scope,
``shop.orders`` in a cluster scope. A member is replicated as a stream of its own, the *unit* ``<stream>/<member>``
(``shop/orders``), with its own checkpoint, lease, status, counters, gaps and dead letters. ``/`` cannot appear in a
stream name, so a unit name never collides with a single-collection stream, and those keep their checkpoint ``_id``.

Estuary names: in a database scope each collection keeps its name in the estuary's database; in a cluster scope each
keeps its database and collection names, the database name behind ``estuary_database_prefix`` (so a cluster can be
copied into itself: ``copy_`` sends ``shop.orders`` to ``copy_shop.orders``, and databases starting with the prefix
are never sources). The mapping is one-to-one, so two source collections never share an estuary collection.

Patterns are shell globs (``*``, ``?``, ``[seq]``; case-sensitive, as MongoDB names are) on the member name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any, Literal, NamedTuple

Scope = Literal["collection", "database", "cluster"]

UNIT_SEPARATOR = "/"
# Never sources of a cluster scope: MongoDB's own databases.
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})
MAX_DATABASE_NAME = 63  # Azure DocumentDB and MongoDB Atlas; MongoDB itself allows 64 bytes


class Target(NamedTuple):
    """Where a stream writes: its scope, its estuary database and collection, and what its patterns cover."""

    scope: Scope
    database: str | None
    collection: str | None
    prefix: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]


def unit_name(stream: str, member: str) -> str:
    """The name a member is replicated under: its checkpoint ``_id``, dead-letter ``stream``, log dimension."""
    return f"{stream}{UNIT_SEPARATOR}{member}"


def split_unit(name: str) -> tuple[str, str | None]:
    """``("shop", "orders")`` for ``shop/orders``; ``("orders", None)`` for a single-collection stream's name."""
    stream, separator, member = name.partition(UNIT_SEPARATOR)
    return stream, member if separator else None


def member_name(database: str, collection: str, scope: Scope) -> str:
    """How a collection is named in a scope: ``collection`` (database scope) or ``database.collection``."""
    return f"{database}.{collection}" if scope == "cluster" else collection


def split_member(member: str, scope: Scope) -> tuple[str | None, str]:
    """The database (cluster scope only; a database name holds no '.') and the collection of a member."""
    if scope != "cluster":
        return None, member
    database, _, collection = member.partition(".")
    return database, collection


def covers(member: str, scope: Scope, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a member matches ``include`` (all when empty) and no ``exclude`` pattern; ``system.*`` collections and
    MongoDB's own databases never do."""
    database, collection = split_member(member, scope)
    if collection.startswith("system.") or database in SYSTEM_DATABASES:
        return False
    if include and not any(fnmatchcase(member, pattern) for pattern in include):
        return False
    return not any(fnmatchcase(member, pattern) for pattern in exclude)


def glob_regex(pattern: str) -> str | None:
    """A glob as an anchored regular expression Python and MongoDB read alike, for a server-side ``$match``;
    ``None`` for a pattern with ``[...]`` (then only the client filters, with ``covers``, which stays the rule)."""
    if "[" in pattern:
        return None
    return "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + "$"


def ns_match(scope: Scope, include: Sequence[str]) -> dict[str, Any]:
    """The ``$match`` a single change stream over a database or cluster reads through: no ``system.*`` collections, no
    MongoDB databases, and (database scope) only the ``include`` patterns when each is a plain glob. Events without
    a collection (``dropDatabase``, ``invalidate``) always pass; ``covers`` stays the rule, applied to every event."""
    conditions: list[dict[str, Any]] = [{"ns.coll": {"$not": {"$regex": "^system\\."}}}]
    if scope == "cluster":
        conditions.append({"ns.db": {"$nin": sorted(SYSTEM_DATABASES)}})
    regexes = [glob_regex(pattern) for pattern in include]
    if scope == "database" and include and all(regexes):
        conditions.append(
            {"$or": [{"ns.coll": {"$exists": False}}, *({"ns.coll": {"$regex": r}} for r in regexes if r)]}
        )
    return {"$match": {"$and": conditions}}


def may_share(a: Target, b: Target) -> bool:
    """Whether two streams writing to one cluster can write one estuary collection (a scoped one: any it covers)."""
    if "cluster" in (a.scope, b.scope):
        wide, other = (a, b) if a.scope == "cluster" else (b, a)
        if other.scope == "cluster":
            return wide.prefix.startswith(other.prefix) or other.prefix.startswith(wide.prefix)
        return (other.database or "").startswith(wide.prefix)
    if a.database != b.database:
        return False
    if a.scope == b.scope == "collection":
        return a.collection == b.collection
    if a.scope == b.scope:
        return True
    scoped, single = (a, b) if a.scope == "database" else (b, a)
    return covers(single.collection or "", "database", scoped.include, scoped.exclude)


def pattern_problems(patterns: Iterable[str]) -> list[str]:
    """What is wrong with glob patterns (empty ones, stray whitespace), as messages."""
    return [
        f"pattern {pattern!r} must be non-empty and without leading or trailing spaces"
        for pattern in patterns
        if not pattern or pattern != pattern.strip()
    ]
