"""A BSON-faithful MongoDB wire server for tests: documents are kept and served as the exact bytes received.

Real pymongo talks to it unmodified (``FaithfulServer().uri``). Every value survives every path byte for byte:
dates outside Python's range, Decimal128 NaN and -0, double -0.0/NaN/inf, Int32 vs Int64, binary subtypes,
Timestamp, Regex, MinKey/MaxKey, Code with scope, DBRef with extra fields, ``$``-prefixed and dotted field names,
field order, documents near 16 MB. Writes produce change streams (``$changeStream`` with resume tokens, 286 when
a token is no longer in the log). It is a test tool, not a database: one lock, everything in memory, linear scans.

Modules:

* ``server``: the listener, the change-stream wait and the test hooks (``fail``, ``refuse_field``, ``documents``,
  ``events``, ``commands``, ``truncate_log``);
* ``engine``: command dispatch and injected failures; ``crud``, ``admin``, ``aggregation``: the commands;
* ``store``: raw storage, unique indexes, undo steps; ``changelog``: events and resume tokens;
  ``transactions``: sessions (writes applied at once, events published on commit, no isolation);
* ``cursors``: batches and change stream cursors; ``matching``: filters, projections, sorts in BSON order;
  ``updates``: replacements and ``$set``/``$setOnInsert``/``$inc``/``$unset``;
* ``rawdoc``: reading and splicing raw BSON elements; ``framing``: lossless OP_MSG decoding; ``errors``.
"""

from __future__ import annotations

from localdev.standins.faithful.server import FaithfulServer

__all__ = ["FaithfulServer"]
