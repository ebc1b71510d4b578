"""Cardinality limits at ingest: a flood of run, metric or layer names cannot grow without bound.

`Cardinality.admit` sees every decoded message before it is queued for the store. A message for a
new run beyond `max_runs` is refused whole (nack ``too_many``: the agent drops it). Within a run,
metric names beyond `max_metrics_per_run` and layer names beyond `max_layers_per_run` are left out
of the message (the rest is stored); across all runs at most `max_names` metric and layer names are
tracked. Every refused series is counted in `Stats.refused_series`
(``spikewatch_refused_series_total``). The known runs are read from the store at start and read
again, at most every `RESYNC_S` seconds, when a new run meets the limit: runs deleted meanwhile
(`spikewatch runs delete/prune`, through the API or on the database) free their places without a
restart. Metric and layer names are counted from what this server process has seen.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from spikewatch.protocol import wire
from spikewatch.server._stats import Stats

log = logging.getLogger(__name__)
V = TypeVar("V")

_WARN_EVERY_S = 60.0
RESYNC_S = 5.0  # the least time between two reads of the stored runs at the limit


@dataclass(frozen=True, slots=True)
class Limits:
    """Distinct names the server accepts (see the module docstring)."""

    max_runs: int = 10_000
    max_metrics_per_run: int = 512
    max_layers_per_run: int = 8192
    max_names: int = 2_000_000


@dataclass(slots=True)
class _Run:
    metrics: set[str] = field(default_factory=set)
    layers: set[str] = field(default_factory=set)


class Cardinality:
    """Tracks the names seen per run and trims what exceeds `Limits`. Not thread-safe: one
    caller (the collector's I/O thread)."""

    def __init__(self, limits: Limits, stats: Stats,
                 known_runs: Callable[[], Iterable[str]] = tuple,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.stats = limits, stats
        self._known, self._clock = known_runs, clock
        self._runs: dict[str, _Run] = {name: _Run() for name in known_runs()}
        self._synced = clock()
        self._names = 0
        self._warned = 0.0

    def admit(self, msg: wire.Hello | wire.Batch) -> wire.Hello | wire.Batch:
        """`msg`, less the series over the limits. Raises `WireError("too_many")` for a new run
        beyond `max_runs`."""
        run = self._runs.get(msg.header.run)
        if run is None:
            if len(self._runs) >= self.limits.max_runs:
                self._resync()
            if len(self._runs) >= self.limits.max_runs:
                self._refuse(1, f"run limit {self.limits.max_runs} reached")
                raise wire.WireError("too_many", f"more than {self.limits.max_runs} runs")
            run = self._runs[msg.header.run] = _Run()
        if isinstance(msg, wire.Hello):
            return msg
        refused = 0
        records = []
        for r in msg.records:
            keep, n = self._record(run, r)
            records.append(keep)
            refused += n
        if not refused:
            return msg
        self._refuse(refused, f"run {msg.header.run!r} is over its metric/layer limits")
        return dataclasses.replace(msg, records=tuple(records))

    def _resync(self) -> None:
        """Forget the runs no longer stored (deleted since the last read), at most every
        `RESYNC_S` seconds."""
        now = self._clock()
        if now - self._synced < RESYNC_S:
            return
        self._synced = now
        stored = set(self._known())
        self._runs = {name: run for name, run in self._runs.items() if name in stored}

    def _record(self, run: _Run, r: wire.Record) -> tuple[wire.Record, int]:
        refused = 0

        def metrics(d: Mapping[str, V]) -> dict[str, V]:
            nonlocal refused
            out = {k: v for k, v in d.items() if self._allow(run.metrics, k,
                                                             self.limits.max_metrics_per_run)}
            refused += len(d) - len(out)
            return out

        def layers(d: Mapping[str, Mapping[str, V]]) -> dict[str, dict[str, V]]:
            nonlocal refused
            out: dict[str, dict[str, V]] = {}
            for k, per in metrics(d).items():
                kept = {n: v for n, v in per.items()
                        if self._allow(run.layers, n, self.limits.max_layers_per_run)}
                refused += len(per) - len(kept)
                if kept:
                    out[k] = kept
            return out

        new = dataclasses.replace(r, scalars=metrics(r.scalars), partials=metrics(r.partials),
                                  layers=layers(r.layers), hists=layers(r.hists))
        return (new, refused) if refused else (r, 0)

    def _allow(self, seen: set[str], name: str, limit: int) -> bool:
        if name in seen:
            return True
        if len(seen) >= limit or self._names >= self.limits.max_names:
            return False
        seen.add(name)
        self._names += 1
        return True

    def _refuse(self, n: int, why: str) -> None:
        self.stats.refused_series(n)
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            log.warning("cardinality limit: %s; refused series are counted in "
                        "spikewatch_refused_series_total", why)
