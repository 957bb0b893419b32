"""The data commands: ``insert``, ``update``, ``delete``, ``find``, ``count``, ``findAndModify``.

Each handler takes the store, the transaction the command runs in (or ``None``) and the request, and returns the
reply body. Write failures of single operations go to ``writeErrors`` (ordered writes stop at the first,
unordered continue), as the server reports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument

from localdev.standins.faithful import rawdoc, updates
from localdev.standins.faithful.cursors import FIRST_BATCH, Cursors, QueryCursor, batch_size, raw_list, take
from localdev.standins.faithful.errors import BAD_VALUE, FAILED_TO_PARSE, CommandError, WriteFailedError
from localdev.standins.faithful.framing import Request
from localdev.standins.faithful.matching import project, sort_documents
from localdev.standins.faithful.store import Store, Transaction, id_key
from shared.raw_bson import RAW


def namespace(request: Request) -> str:
    coll = request.body[request.command_name]
    if not isinstance(coll, str) or not coll:
        raise CommandError(BAD_VALUE, f"collection name must be a nonempty string, not {coll!r}")
    return f"{request.db}.{coll}"


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CommandError(BAD_VALUE, f"{what} must be a document")
    return value


def _write_reply(n: int, errors: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {"n": n, **extra}
    if errors:
        reply["writeErrors"] = errors
    reply["ok"] = 1.0
    return reply


def insert(store: Store, txn: Transaction | None, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    ordered = request.body.get("ordered", True) is not False
    n, errors = 0, []
    for index, doc in enumerate(request.documents("documents")):
        try:
            if rawdoc.get(doc, "_id") is None:
                doc = updates.id_first(doc)
            store.insert(ns, doc, txn)
            n += 1
        except WriteFailedError as failure:
            errors.append(failure.write_error(index))
            if ordered:
                break
    return _write_reply(n, errors)


def _update_one(store: Store, txn: Transaction | None, ns: str, spec: Mapping[str, Any]) -> tuple[int, int, Any | None]:
    """(matched, modified, upserted _id) of one update statement."""
    query = _mapping(spec.get("q"), "q")
    update, operators = updates.parse(spec.get("u"))
    multi = bool(spec.get("multi", False))
    if multi and not operators:
        raise WriteFailedError(FAILED_TO_PARSE, "multi update is not supported for replacement-style update")
    targets = store.select(ns, query)
    if not multi:
        targets = targets[:1]
    if not targets:
        if not spec.get("upsert", False):
            return 0, 0, None
        change = updates.upserted(query, update)
        key = store.insert(ns, change.document, txn)
        return 1, 0, rawdoc.elements(key)[0].decode()
    modified = 0
    for key, current in targets:
        if operators:
            change = updates.apply_operators(current, update, inserting=False)
        else:
            change = updates.replacement(current, update)
        if change.document == current:
            continue  # a no-op: not modified, no event (as the server does)
        description = None if change.replaced else (rawdoc.build(change.updated), change.removed)
        operation = "replace" if change.replaced else "update"
        store.replace(ns, key, change.document, txn, operation=operation, description=description)
        modified += 1
    return len(targets), modified, None


def update(store: Store, txn: Transaction | None, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    ordered = request.body.get("ordered", True) is not False
    n = modified = 0
    upserted: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, raw in enumerate(request.documents("updates")):
        try:
            matched, changed, new_id = _update_one(store, txn, ns, RawBSONDocument(raw, RAW))
        except WriteFailedError as failure:
            errors.append(failure.write_error(index))
            if ordered:
                break
            continue
        n += matched
        modified += changed
        if new_id is not None:
            upserted.append({"index": index, "_id": new_id})
    extra: dict[str, Any] = {"nModified": modified}
    if upserted:
        extra["upserted"] = upserted
    return _write_reply(n, errors, **extra)


def delete(store: Store, txn: Transaction | None, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    ordered = request.body.get("ordered", True) is not False
    n, errors = 0, []
    for index, raw in enumerate(request.documents("deletes")):
        spec = RawBSONDocument(raw, RAW)
        try:
            targets = store.select(ns, _mapping(spec.get("q"), "q"))
            if spec.get("limit", 0) == 1:
                targets = targets[:1]
            for key, _ in targets:
                store.delete(ns, key, txn)
            n += len(targets)
        except WriteFailedError as failure:
            errors.append(failure.write_error(index))
            if ordered:
                break
    return _write_reply(n, errors)


def _skip_limit(docs: list[bytes], skip: Any, limit: Any) -> list[bytes]:
    skip, limit = int(skip or 0), int(limit or 0)
    if skip < 0:
        raise CommandError(BAD_VALUE, "skip value must be non-negative")
    docs = docs[skip:]
    return docs[: abs(limit)] if limit else docs


def find(store: Store, cursors: Cursors, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    body = request.body
    docs = [doc for _, doc in store.select(ns, _mapping(body.get("filter"), "filter"))]
    docs = sort_documents(docs, _mapping(body.get("sort"), "sort"))
    docs = _skip_limit(docs, body.get("skip"), body.get("limit"))
    projection = _mapping(body.get("projection"), "projection")
    if projection:
        docs = [project(doc, projection) for doc in docs]
    cursor = QueryCursor(ns, docs)
    size = batch_size(body.get("batchSize"), FIRST_BATCH)
    if body.get("singleBatch") or (body.get("limit") or 0) < 0:
        return {"cursor": {"firstBatch": raw_list(take(docs, 0, size)), "id": Int64(0), "ns": ns}, "ok": 1.0}
    return {"cursor": cursors.first_batch(cursor, size), "ok": 1.0}


def count(store: Store, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    docs = [doc for _, doc in store.select(ns, _mapping(request.body.get("query"), "query"))]
    docs = _skip_limit(docs, request.body.get("skip"), request.body.get("limit"))
    return {"n": len(docs), "ok": 1.0}


def find_and_modify(store: Store, txn: Transaction | None, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    body = request.body
    query = _mapping(body.get("query"), "query")
    fields = _mapping(body.get("fields"), "fields")
    remove = bool(body.get("remove", False))
    if remove == (body.get("update") is not None):
        raise CommandError(FAILED_TO_PARSE, "findAndModify needs exactly one of 'remove' and 'update'")
    targets = [doc for _, doc in store.select(ns, query)]
    sort = _mapping(body.get("sort"), "sort")
    target = sort_documents(targets, sort)[0] if targets else None
    try:
        if remove:
            if target is None:
                return _fam_reply(None, {"n": 0})
            store.delete(ns, id_key(target), txn)
            return _fam_reply(project(target, fields), {"n": 1})
        update_doc, operators = updates.parse(body.get("update"))
        if target is None:
            if not body.get("upsert", False):
                return _fam_reply(None, {"n": 0, "updatedExisting": False})
            change = updates.upserted(query, update_doc)
            key = store.insert(ns, change.document, txn)
            value = project(change.document, fields) if body.get("new", False) else None
            upserted_id = rawdoc.elements(key)[0].decode()
            return _fam_reply(value, {"n": 1, "updatedExisting": False, "upserted": upserted_id})
        if operators:
            change = updates.apply_operators(target, update_doc, inserting=False)
        else:
            change = updates.replacement(target, update_doc)
        if change.document != target:
            description = None if change.replaced else (rawdoc.build(change.updated), change.removed)
            operation = "replace" if change.replaced else "update"
            store.replace(ns, id_key(target), change.document, txn, operation=operation, description=description)
        value = change.document if body.get("new", False) else target
        return _fam_reply(project(value, fields), {"n": 1, "updatedExisting": True})
    except WriteFailedError as failure:
        raise failure.as_command_error() from failure


def _fam_reply(value: bytes | None, last_error: dict[str, Any]) -> dict[str, Any]:
    return {
        "lastErrorObject": last_error,
        "value": None if value is None else RawBSONDocument(value, RAW),
        "ok": 1.0,
    }
