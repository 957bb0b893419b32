"""The replication benchmark's record of a drain and its report: the summary, the table and the profile rows.

Apart from the drains themselves (``replication_throughput``) so that what is measured and how it is judged
against the target read separately.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
from dataclasses import dataclass
from typing import Any, Literal

TARGET_RATIO = 1.25

Kind = Literal["baseline", "replicator"]
Mode = Literal["timed", "profile", "heap"]


@dataclass
class Drain:
    """One drain of N events."""

    kind: Kind
    run: int
    mode: Mode
    events: int
    seconds: float  # until the estuary held all N events
    events_per_s: float
    tail_seconds: float = 0.0  # replicator: after the last batch until the pass ended (idle_timeout)
    passes: int = 0
    rss_start_mib: float = 0.0
    rss_peak_mib: float = 0.0
    heap_peak_mib: float | None = None  # mode "heap": tracemalloc peak during the drain
    preload_events_per_s: float = 0.0
    cpu_seconds: dict[str, float] | None = None  # until the estuary held all N events: client and each server
    batch_size: int | None = None  # replicator: events per batch


_PROFILE_ROWS = (  # (label, file suffix, function): cumulative seconds in these calls; "" adds to the row above
    ("change stream reads (try_next)", "pymongo/synchronous/change_stream.py", "try_next"),
    ("waiting for the batch read ahead", "concurrent/futures/_base.py", "result"),
    ("estuary bulk_write", "pymongo/synchronous/collection.py", "bulk_write"),
    ("checkpoint saves", "shared/position.py", "save"),
    ("lease acquire + release + status", "shared/position.py", "acquire"),
    ("", "shared/position.py", "release"),
    ("", "shared/position.py", "set_status"),
    ("batch planning (collapse by _id)", "shared/estuary.py", "_plan"),
    ("metrics (per-event counters)", "shared/replicate/streaming.py", "_count"),
    ("sleeps (empty polls)", "shared/clock.py", "sleep"),
    ("socket receive (waiting on servers)", "network_layer.py", "recv_into"),
)


def profile_breakdown(profile: cProfile.Profile) -> dict[str, float]:
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    out = {"total": round(sum(tt for (_c, _n, tt, _ct, _) in stats.values()), 3)}
    label = ""
    for name, suffix, func in _PROFILE_ROWS:
        label = name or label
        seconds = sum(ct for (f, _l, fn), (_c, _n, _t, ct, _) in stats.items() if fn == func and f.endswith(suffix))
        out[label] = round(out.get(label, 0.0) + seconds, 3)
    return out


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def summarise(drains: list[Drain]) -> dict[str, Any]:
    base = [d for d in drains if d.kind == "baseline"]
    repl = [d for d in drains if d.kind == "replicator"]
    pairs = [r.events_per_s / b.events_per_s for b, r in zip(base, repl, strict=True)]
    ratio = statistics.median(d.events_per_s for d in repl) / statistics.median(d.events_per_s for d in base)
    return {
        "baseline_events_per_s": spread([d.events_per_s for d in base]),
        "replicator_events_per_s": spread([d.events_per_s for d in repl]),
        "ratio_of_medians": round(ratio, 3),
        "ratio_per_pair": spread(pairs, 3),
        "replicator_idle_tail_s": spread([d.tail_seconds for d in repl], 2),
        "baseline_peak_rss_mib": max(d.rss_peak_mib for d in base),
        "replicator_peak_rss_mib": max(d.rss_peak_mib for d in repl),
        "target_met": ratio >= TARGET_RATIO,
        "cpu_seconds": {kind: _cpu(ds) for kind, ds in (("baseline", base), ("replicator", repl))},
    }


def _cpu(drains: list[Drain]) -> dict[str, float]:
    """Median CPU seconds of each process over the drains, and the cores they kept busy (CPU / wall time)."""
    timed = [d for d in drains if d.cpu_seconds]
    if not timed:
        return {}
    names = list(timed[0].cpu_seconds or {})
    out = {name: round(statistics.median((d.cpu_seconds or {})[name] for d in timed), 2) for name in names}
    out["cores_busy"] = round(statistics.median(sum((d.cpu_seconds or {}).values()) / d.seconds for d in timed), 2)
    return out


def print_report(results: dict[str, Any]) -> None:
    print(f"replication throughput on {results['machine']}")
    print(
        f"  {results['events']} events per drain (70% inserts, 20% updates, 10% deletes), replicator batch "
        f"{', '.join(map(str, results['batch_size']))} (apply_concurrency {results['apply_concurrency'] or '-'}), "
        f"baseline batch {results['baseline_batch']}, {results['runs']} drains of each kind alternating; every estuary "
        "equals its source"
    )
    if results.get("latency_ms"):
        print(f"  every request to either server through a proxy adding {results['latency_ms']:g} ms (bench.latency)")
    print(
        f"  {'run':<4}{'kind':<12}{'batch':>6}{'events/s':>9}{'time':>8}{'idle tail':>11}{'passes':>8}"
        f"{'RSS start':>11}{'peak':>8}"
    )
    for d in results["drains"]:
        repl = d["kind"] == "replicator"
        tail, passes = (f"{d['tail_seconds']:.2f}s", d["passes"]) if repl else ("-", "-")
        batch = d["batch_size"] if repl else results["baseline_batch"]
        print(
            f"  {d['run']:<4}{d['kind']:<12}{batch:>6}{d['events_per_s']:>9.0f}{d['seconds']:>7.2f}s{tail:>11}"
            f"{passes:>8}{d['rss_start_mib']:>8.1f}MiB{d['rss_peak_mib']:>5.1f}MiB"
        )
    for size, summary in results["summary"].items():
        _print_summary(f"replicator batch {size}", summary)
    _print_extras(results)


def _print_summary(label: str, s: dict[str, Any]) -> None:
    print(f"  {label}:")
    for kind in ("baseline", "replicator"):
        v = s[f"{kind}_events_per_s"]
        print(f"    {kind:<11} events/s median {v['median']:>6.0f} (min {v['min']:.0f}, max {v['max']:.0f})")
    pair = s["ratio_per_pair"]
    print(
        f"    ratio replicator/baseline {s['ratio_of_medians']:.3f} (ratio of medians; per pair {pair['min']:.3f}-"
        f"{pair['max']:.3f}); target >= {TARGET_RATIO}: {'yes' if s['target_met'] else 'NO'}"
    )
    print(
        f"    peak RSS while draining: baseline {s['baseline_peak_rss_mib']:.1f} MiB, replicator "
        f"{s['replicator_peak_rss_mib']:.1f} MiB; replicator idle tail {s['replicator_idle_tail_s']['median']:.2f}s "
        "(not counted)"
    )
    for kind, cpu in s["cpu_seconds"].items():
        if cpu:
            used = ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items() if name != "cores_busy")
            print(f"    CPU seconds per {kind} drain (median): {used}; cores busy {cpu['cores_busy']:.2f}")


def _print_extras(results: dict[str, Any]) -> None:
    if "scale_check" in results:
        check = results["scale_check"]
        for d in check["drains"]:
            print(f"  scale check {d['kind']:<11} N={d['events']:<7} Python heap peak {d['heap_peak_mib']:6.2f} MiB")
        print(
            f"  memory bounded (4 x N within 1.5 x the heap peak of N + 1 MiB): {'yes' if check['bounded'] else 'NO'}"
        )
    for kind, rows in results.get("profile", {}).items():
        print(f"  profile of one {kind} drain (cProfile, client side, the calling thread, seconds; rows overlap):")
        for label, seconds in rows.items():
            print(f"    {label:<38}{seconds:>7.3f}")
