"""The store's read interface, defined once: what the API, exporter, report and backtest read.

`Store` satisfies `StoreReads` (a test checks it). Readers depend on this Protocol rather than on
the SQL class, so they can be handed anything that answers the same queries.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from spikewatch.server.store.rows import AlertRow, EventRow, HistRow, Point, RunRow


@runtime_checkable
class StoreReads(Protocol):
    """Runs, series, histograms, events, alerts and latest values, each in step (or start) order.

    Paged reads return at most `limit` rows from `step_min`; a caller reads on from the last
    row's step + 1 until a page comes back short.
    """

    def list_runs(self) -> list[RunRow]:
        """All runs, most recently seen first."""
        ...

    def get_run(self, name: str) -> RunRow | None:
        """One run by name, or None."""
        ...

    def metrics(self, run: str) -> list[str]:
        """Names of every metric stored for a run."""
        ...

    def series(self, run: str, metric: str, *, layer: str | None = None, rank: int | None = None,
               step_min: int | None = None, step_max: int | None = None,
               limit: int = 10000) -> list[Point]:
        """Points of one series (the global value unless `layer` or `rank` picks one)."""
        ...

    def histograms(self, run: str, metric: str, *, layer: str | None = None,
                   step_min: int | None = None, step_max: int | None = None,
                   limit: int = 1000) -> list[HistRow]:
        """Histograms of a metric (all layers unless `layer` is given)."""
        ...

    def events(self, run: str, *, type: str | None = None, step_min: int | None = None,
               step_max: int | None = None, limit: int = 1000) -> list[EventRow]:
        """Events of a run, optionally of one type."""
        ...

    def alerts(self, run: str | None = None, *, state: str | None = None) -> list[AlertRow]:
        """Alert episodes, optionally of one run and/or state."""
        ...

    def latest(self, run: str) -> dict[str, float]:
        """The latest global value of each metric of a run."""
        ...
