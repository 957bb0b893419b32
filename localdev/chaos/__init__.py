"""A chaos soak: the replicator as production runs it (several workers competing for passes) on the local
stand-ins, under a continuous mixed workload, with faults injected at random; at the end a full ``verify`` and an
exact byte comparison must find no difference.

``python -m localdev.chaos [--minutes N | --seconds N] [--workers 3] [--seed S] [--work-dir DIR] [--json]``
(``scripts/chaos.sh`` runs it in the project's virtualenv). Modules:

* ``cli``: options, signals, the run from start to report; ``world``: the stand-ins and the configuration files;
* ``workers``: the worker processes (``python -m shared run``), killed, paused and restarted on request;
* ``workload``: the application writing to the source (every BSON type, a few poison documents);
* ``faults``: the seeded fault schedule (pure) and the injector that applies and undoes each fault;
* ``monitor``: the lag sampler, the catch-up wait and the final comparisons; ``report``: figures, verdict, output.

What the stand-ins cannot show: ``FaithfulServer`` runs transactions without isolation and takes one back by
restoring the documents it changed, and it executes a retried retryable write again. A real server makes a claim of
the fence wait for (or conflict with) a stalled worker's open transaction and de-duplicates retried writes. Before a
difference found here is reported as the replicator's, rule those out in the worker logs (``driver.log`` has
every fault injected and undone, with its time).
"""

from __future__ import annotations
