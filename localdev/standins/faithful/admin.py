"""The handshake and the catalogue commands: ``hello``/``isMaster``, ``buildInfo``, ``create``, ``drop``,
``dropDatabase``, ``listCollections``, ``listDatabases``, ``createIndexes``, ``dropIndexes``, ``listIndexes``.

Indexes are remembered as listed; a ``unique`` one (on top-level or dotted fields) is enforced on every write with
11000, and refused at creation when the documents already hold a duplicate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import bson
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument

from localdev.standins.faithful.crud import namespace
from localdev.standins.faithful.cursors import raw_list
from localdev.standins.faithful.errors import (
    BAD_VALUE,
    DUPLICATE_KEY,
    INDEX_NOT_FOUND,
    NAMESPACE_EXISTS,
    NAMESPACE_NOT_FOUND,
    CommandError,
)
from localdev.standins.faithful.framing import Request
from localdev.standins.faithful.matching import matches
from localdev.standins.faithful.store import MAX_BSON_OBJECT_SIZE, Index, Store

MAX_MESSAGE_SIZE = 48_000_000
MAX_WIRE_VERSION = 21  # MongoDB 7.0
SET_NAME = "rs0"
_INDEX_KEY_SPECS_CONFLICT = 86
_ID_INDEX = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
_ELECTION_ID = ObjectId("7fffffff0000000000000001")


def hello(body: Mapping[str, Any], *, host: str, replica_set: bool, connection_id: int) -> dict[str, Any]:
    """The handshake reply: a replica-set primary (``rs0``, this one member) or a standalone."""
    reply: dict[str, Any] = {}
    if body.get("helloOk"):
        reply["helloOk"] = True
    legacy = next(iter(body), "").lower() == "ismaster"
    reply["ismaster" if legacy else "isWritablePrimary"] = True
    if replica_set:
        reply.update(
            setName=SET_NAME,
            setVersion=1,
            hosts=[host],
            primary=host,
            me=host,
            electionId=_ELECTION_ID,
            secondary=False,
        )
    reply.update(
        maxBsonObjectSize=MAX_BSON_OBJECT_SIZE,
        maxMessageSizeBytes=MAX_MESSAGE_SIZE,
        maxWriteBatchSize=100_000,
        localTime=dt.datetime.now(dt.UTC),
        logicalSessionTimeoutMinutes=30,
        connectionId=connection_id,
        minWireVersion=0,
        maxWireVersion=MAX_WIRE_VERSION,
        readOnly=False,
        ok=1.0,
    )
    return reply


def build_info() -> dict[str, Any]:
    return {
        "version": "7.0.0",
        "gitVersion": "faithful-standin",
        "versionArray": [7, 0, 0, 0],
        "bits": 64,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        "ok": 1.0,
    }


def _names_in(store: Store, db: str) -> list[str]:
    prefix = db + "."
    return [ns[len(prefix) :] for ns in store.collections if ns.startswith(prefix)]


def _cursor(ns: str, docs: list[bytes]) -> dict[str, Any]:
    return {"cursor": {"firstBatch": raw_list(docs), "id": Int64(0), "ns": ns}, "ok": 1.0}


def _filtered(docs: list[dict[str, Any]], query: Any) -> list[bytes]:
    encoded = [bson.encode(doc) for doc in docs]
    return [doc for doc in encoded if matches(doc, query)] if isinstance(query, Mapping) else encoded


def create(store: Store, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    if ns in store.collections:
        raise CommandError(NAMESPACE_EXISTS, f"Collection {ns} already exists.")
    store.collection(ns)
    return {"ok": 1.0}


def drop(store: Store, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    dropped = store.drop(ns)
    return {"ns": ns, "nIndexesWas": 0 if dropped is None else 1 + len(dropped.indexes), "ok": 1.0}


def drop_database(store: Store, request: Request) -> dict[str, Any]:
    for name in _names_in(store, request.db):
        store.drop(f"{request.db}.{name}")
    return {"dropped": request.db, "ok": 1.0}


def list_collections(store: Store, request: Request) -> dict[str, Any]:
    name_only = bool(request.body.get("nameOnly", False))
    infos: list[dict[str, Any]] = []
    for name in sorted(_names_in(store, request.db)):
        info: dict[str, Any] = {"name": name, "type": "collection"}
        if not name_only:
            info.update(options={}, info={"readOnly": False}, idIndex=_ID_INDEX)
        infos.append(info)
    return _cursor(f"{request.db}.$cmd.listCollections", _filtered(infos, request.body.get("filter")))


def list_databases(store: Store, request: Request) -> dict[str, Any]:
    sizes: dict[str, int] = {}
    for ns, coll in store.collections.items():
        db = ns.partition(".")[0]
        sizes[db] = sizes.get(db, 0) + sum(len(doc) for doc in coll.docs.values())
    if request.body.get("nameOnly"):
        entries: list[dict[str, Any]] = [{"name": db} for db in sorted(sizes)]
    else:
        entries = [{"name": db, "sizeOnDisk": size, "empty": size == 0} for db, size in sorted(sizes.items())]
    databases = [RawBSONDocument(doc) for doc in _filtered(entries, request.body.get("filter"))]
    total = sum(sizes.values())
    return {"databases": databases, "totalSize": total, "totalSizeMb": total // 2**20, "ok": 1.0}


def _index_name(key: Mapping[str, Any]) -> str:
    return "_".join(f"{field}_{direction}" for field, direction in key.items())


def create_indexes(store: Store, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    created = ns not in store.collections
    coll = store.collection(ns)
    before = 1 + len(coll.indexes)
    specs = request.body.get("indexes")
    if not isinstance(specs, list) or not specs:
        raise CommandError(BAD_VALUE, "createIndexes needs a nonempty array 'indexes'")
    for spec in specs:
        key = spec.get("key") if isinstance(spec, Mapping) else None
        if not isinstance(key, Mapping) or not key:
            raise CommandError(BAD_VALUE, "an index specification needs a nonempty 'key' document")
        name = str(spec.get("name") or _index_name(key))
        if list(key) == ["_id"]:
            continue  # always there
        existing = coll.indexes.get(name)
        if existing is not None:
            if dict(existing.key) != dict(key):
                raise CommandError(_INDEX_KEY_SPECS_CONFLICT, f"An existing index has the same name ({name})")
            continue
        index = Index(name, dict(key), unique=bool(spec.get("unique")), sparse=bool(spec.get("sparse")))
        if index.unique:
            for doc_key, doc in coll.docs.items():
                entry = index.entry(doc)
                if entry is None:
                    continue
                if entry in index.entries:
                    raise CommandError(
                        DUPLICATE_KEY,
                        f"Index build failed: E11000 duplicate key error collection: {ns} index: {name} "
                        f"dup key: {index.describe(doc)}",
                    )
                index.entries[entry] = doc_key
        coll.indexes[name] = index
    return {
        "createdCollectionAutomatically": created,
        "numIndexesBefore": before,
        "numIndexesAfter": 1 + len(coll.indexes),
        "ok": 1.0,
    }


def list_indexes(store: Store, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    coll = store.get(ns)
    if coll is None:
        raise CommandError(NAMESPACE_NOT_FOUND, f"ns does not exist: {ns}")
    specs: list[dict[str, Any]] = [_ID_INDEX]
    for index in coll.indexes.values():
        spec: dict[str, Any] = {"v": 2, "key": index.key, "name": index.name}
        if index.unique:
            spec["unique"] = True
        if index.sparse:
            spec["sparse"] = True
        specs.append(spec)
    coll_name = ns.partition(".")[2]
    return _cursor(f"{request.db}.$cmd.listIndexes.{coll_name}", [bson.encode(spec) for spec in specs])


def drop_indexes(store: Store, request: Request) -> dict[str, Any]:
    ns = namespace(request)
    coll = store.get(ns)
    if coll is None:
        raise CommandError(NAMESPACE_NOT_FOUND, f"ns not found {ns}")
    was = 1 + len(coll.indexes)
    wanted = request.body.get("index")
    if wanted == "*":
        names = list(coll.indexes)
    elif isinstance(wanted, str):
        names = [wanted]
    elif isinstance(wanted, list):
        names = [str(name) for name in wanted]
    elif isinstance(wanted, Mapping):
        names = [index.name for index in coll.indexes.values() if dict(index.key) == dict(wanted)]
        if not names:
            raise CommandError(INDEX_NOT_FOUND, f"can't find index with key: {dict(wanted)}")
    else:
        raise CommandError(BAD_VALUE, "dropIndexes needs 'index'")
    for name in names:
        if name not in coll.indexes:
            raise CommandError(INDEX_NOT_FOUND, f"index not found with name [{name}]")
    for name in names:
        del coll.indexes[name]
    return {"nIndexesWas": was, "ok": 1.0}
