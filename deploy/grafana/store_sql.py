"""The SQL the run dashboard sends to the spikewatch store through Grafana's PostgreSQL datasource.

Every query is what `server/store/_reader.py` (and so the HTTP API) returns, written in
PostgreSQL for Grafana:

- a run is found by name in `runs`; the variable `$run` is Grafana's single-value SQL
  interpolation (the value with `'` doubled, no quotes added), so it always sits inside `'...'`;
- a scalar series is the global one: rank 0's value, or the value combined from every rank's
  partial sums (stored under rank -1), exactly `Reader.series` without `rank`;
- a non-finite value is stored as NULL with a marker in `value_nf` (1 NaN, 2 +Inf, 3 -Inf, see
  `server/store/_codec.py`): the plotted series leave it NULL (a gap; Grafana cannot place NaN or
  ±Inf on an axis) and the event table names it;
- times are Unix epoch seconds (float): annotations turn them into timestamps with `to_timestamp`
  and keep to the dashboard's time range with `$__unixEpochFilter` / `$__unixEpochFrom()` /
  `$__unixEpochTo()` on the raw column.

Only the macros above and `$run` are used; tests/deploy/test_dashboard_sql.py substitutes them as
Grafana does and runs every query against a real store.
"""

from __future__ import annotations

from collections.abc import Sequence

RUN_ID = "(SELECT id FROM runs WHERE name = '$run')"
ANNOTATED_EVENTS = ("guard_action", "guard_release", "loss_spike", "nonfinite", "hparam_change",
                    "momentum_jump")
"""Event types shown as annotations and in the step-ordered table (not phase changes or probe
errors: too frequent to read as marks)."""
_MARKERS = "CASE {col} WHEN 1 THEN 'NaN' WHEN 2 THEN '+Inf' WHEN 3 THEN '-Inf' END"
RUNS = "SELECT name FROM runs ORDER BY last_seen DESC"
"""The `$run` variable: every stored run, the most recently heard from first (Grafana selects
the first)."""


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _value_text(value: str, nf: str) -> str:
    """A stored float as text: the number, or NaN / +Inf / -Inf from its marker."""
    return f"coalesce({value}::text, {_MARKERS.format(col=nf)})"


def series(columns: Sequence[tuple[str, str]], marks: Sequence[tuple[str, str, str]] = ()) -> str:
    """One row per step: `step`, then one column per (label, metric) of the run's global scalars,
    then per (label, metric, event type) that metric's value at the steps with such an event
    (drawn as points on the line). Steps ascend strictly, as the trend panel requires."""
    metrics = sorted({m for _, m in columns} | {m for _, m, _ in marks})
    cols = [f'max(s.value) FILTER (WHERE s.metric = \'{m}\') AS "{label}"'
            for label, m in columns]
    cols += [f"max(s.value) FILTER (WHERE s.metric = '{m}' AND s.step IN "
             f"(SELECT step FROM events WHERE run_id = s.run_id AND type = '{ev}')) "
             f'AS "{label}"' for label, m, ev in marks]
    return ('SELECT s.step AS "step",\n  ' + ",\n  ".join(cols) + "\n"
            f"FROM scalars s\n"
            f"WHERE s.run_id = {RUN_ID} AND s.rank IN (-1, 0)"
            f" AND s.metric IN ({_quoted(metrics)})\n"
            "GROUP BY s.step\nORDER BY s.step")


EVENTS_BY_STEP = (
    'SELECT e.step AS "step", e.type AS "what", e.rank AS "rank", e.data AS "detail"\n'
    f"FROM events e\nWHERE e.run_id = {RUN_ID} AND e.type IN ({_quoted(ANNOTATED_EVENTS)})\n"
    "UNION ALL\n"
    "SELECT a.first_step, 'alert ' || a.rule || ' (' || a.severity || ')', NULL,\n"
    "  a.state || ': pending at step ' || a.first_step\n"
    "  || coalesce(', fired at step ' || a.fired_step, '')\n"
    "  || coalesce(', resolved at step ' || a.resolved_step, '')\n"
    f"  || ', value ' || coalesce({_value_text('a.value', 'a.value_nf')}, '-')\n"
    f"FROM alerts a\nWHERE a.run_id = {RUN_ID}\n"
    "UNION ALL\n"
    "SELECT s.step, 'non-finite ' || s.metric, s.rank,"
    f" {_MARKERS.format(col='s.value_nf')}\n"
    f"FROM scalars s\nWHERE s.run_id = {RUN_ID} AND s.value_nf <> 0\n"
    'ORDER BY "step", "what"')
"""Events, alert episodes and non-finite values of the run in step order (a table)."""

EVENT_ANNOTATIONS = (
    'SELECT to_timestamp(e.time) AS "time",\n'
    "  e.type || ' at step ' || e.step || ' (rank ' || e.rank || '): ' || e.data AS \"text\",\n"
    "  'spikewatch,' || e.type AS \"tags\"\n"
    f"FROM events e\nWHERE e.run_id = {RUN_ID} AND e.type IN ({_quoted(ANNOTATED_EVENTS)})\n"
    "  AND $__unixEpochFilter(e.time)\n"
    "ORDER BY e.time")
"""The run's events at their wall time: guard actions and releases, loss spikes, non-finite
values, hyperparameter and momentum changes."""

ALERT_ANNOTATIONS = (
    'SELECT to_timestamp(a.started_at) AS "time",\n'
    '  to_timestamp(coalesce(a.resolved_at, $__unixEpochTo())) AS "timeend",\n'
    "  a.rule || ' (' || a.severity || ', ' || a.state || ') from step ' || a.first_step\n"
    "  || coalesce(', fired at step ' || a.fired_step, '')\n"
    "  || coalesce(', resolved at step ' || a.resolved_step, '')\n"
    f"  || ', value ' || coalesce({_value_text('a.value', 'a.value_nf')}, '-') AS \"text\",\n"
    "  'spikewatch,alert,' || a.severity || ',' || a.rule AS \"tags\"\n"
    f"FROM alerts a\nWHERE a.run_id = {RUN_ID}\n"
    "  AND a.started_at <= $__unixEpochTo()\n"
    "  AND coalesce(a.resolved_at, $__unixEpochTo()) >= $__unixEpochFrom()\n"
    "ORDER BY a.started_at")
"""Each alert episode of the run as a region from when it went pending until it resolved (or
the end of the time range while it is open)."""
