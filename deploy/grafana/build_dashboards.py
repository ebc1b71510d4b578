"""Writes the Grafana dashboards in deploy/grafana/dashboards/ from the panel lists below.

The JSON files are what Grafana provisions and what users edit; this script only keeps their layout
(ids, grid positions, datasource references) consistent. Run it after changing a panel:

    python deploy/grafana/build_dashboards.py

tests/deploy checks that the committed JSON equals what this script produces.

The run dashboard also reads the SQL store (PostgreSQL) through the datasource of
provisioning/datasources/postgres.yml: its SQL is in store_sql.py, beside this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# the modules beside this script, also when it is imported by path (tests/deploy)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_sql as sql
from dashboard_json import (
    DS,
    STORE,
    Json,
    Panel,
    Row,
    Target,
    dashboard,
    sql_target,
)

OUT = Path(__file__).resolve().parent / "dashboards"
RUN_LINK = "/d/spikewatch-run/spikewatch-run-detail?var-run="

PHASES = {1: ("stable", "green"), 2: ("v decay", "yellow"), 3: ("onset", "red"),
          4: ("v growth", "orange"), 5: ("recovery", "blue")}
ALERT_STATES = {1: ("pending", "yellow"), 2: ("firing", "red")}
EDGE = [(None, "green"), (0.8, "yellow"), (1.0, "red")]
RUN_DATA_LINK = [{"title": "Run detail",
                  "url": RUN_LINK + "${__field.labels.run}&${__url_time_range}"}]
HIDDEN = {"Time": True, "__name__": True, "job": True, "instance": True}


def fleet() -> Json:
    """All active runs at a glance."""
    items: list[Panel | Row] = [
        Panel("stat", "Active runs", [Target("spikewatch_active_runs", instant=True)], w=4, h=4),
        Panel("stat", "Runs beyond the edge (r ≥ 1)",
              [Target("count(spikewatch_run_stability_ratio_two_secant >= 1) or vector(0)",
                      instant=True)],
              w=5, h=4, thresholds=[(None, "green"), (1, "red")]),
        Panel("stat", "Firing pages",
              [Target('sum(spikewatch_alerts_firing{severity="page"}) or vector(0)',
                      instant=True)], w=5, h=4, thresholds=[(None, "green"), (1, "red")]),
        Panel("stat", "Firing warnings",
              [Target('sum(spikewatch_alerts_firing{severity="warning"}) or vector(0)',
                      instant=True)], w=5, h=4, thresholds=[(None, "green"), (1, "orange")]),
        Panel("stat", "Server", [Target('up{job="spikewatch"}', "{{instance}}", instant=True)],
              w=5, h=4, mappings={0: ("down", "red"), 1: ("up", "green")}),
        Row("Runs"),
        Panel("table", "Active runs", [
            Target("spikewatch_run_last_step", instant=True, table=True),
            Target("spikewatch_run_stability_ratio_two_secant", instant=True, table=True),
            Target("spikewatch_run_rho_sampled", instant=True, table=True),
            Target("spikewatch_run_phase", instant=True, table=True),
            Target("time() - spikewatch_run_last_seen_timestamp_seconds", instant=True,
                   table=True),
        ], w=12, h=9, description="One row per active run: last step, stability ratio, ρ, phase "
              "and seconds since last heard from.",
              extra_options={"sortBy": [{"displayName": "stability ratio", "desc": True}]},
              transformations=[{"id": "merge", "options": {}}, {"id": "organize", "options": {
                  "excludeByName": HIDDEN, "renameByName": {
                      "Value #A": "last step", "Value #B": "stability ratio", "Value #C": "ρ",
                      "Value #D": "phase", "Value #E": "seconds since seen"}}}],
              links=[{"title": "Run detail",
                      "url": RUN_LINK + "${__data.fields.run}&${__url_time_range}"}]),
        Panel("table", "Pending and firing alerts",
              [Target("spikewatch_run_alert_state", instant=True, table=True)], w=12, h=9,
              mappings=ALERT_STATES, description="Alerts spikewatch holds per run (1 pending, "
              "2 firing); pages are also pushed to Alertmanager.",
              thresholds=[(None, "yellow"), (2, "red")],
              transformations=[{"id": "organize", "options": {
                  "excludeByName": HIDDEN, "renameByName": {"Value": "state"}}}],
              links=[{"title": "Run detail",
                      "url": RUN_LINK + "${__data.fields.run}&${__url_time_range}"}]),
        Panel("timeseries", "Stability ratio of every run (≥ 1: beyond the edge)",
              [Target("spikewatch_run_stability_ratio_two_secant", "{{run}}")], w=24, h=9,
              thresholds=EDGE, threshold_line=True, links=RUN_DATA_LINK,
              description="η·λ/2 along the preconditioned gradient per run (the two-secant "
              "estimate the agent measures every step). A sustained crossing of 1 precedes loss "
              "spikes."),
        Panel("state-timeline", "Phases",
              [Target("spikewatch_run_phase", "{{run}}")], w=24, h=7, mappings=PHASES,
              description="Five-phase label from ρ and the stability ratio: stable, v decay, "
              "onset, v growth, recovery."),
        Panel("timeseries", "ρ = ‖g‖/‖√v̂‖ of every run",
              [Target("spikewatch_run_rho_sampled", "{{run}}")], w=12, h=8, log_scale=True,
              links=RUN_DATA_LINK),
        Panel("timeseries", "Loss of every run",
              [Target("spikewatch_run_loss", "{{run}}")], w=12, h=8, log_scale=True,
              links=RUN_DATA_LINK),
    ]
    return dashboard("spikewatch-fleet", "spikewatch / Fleet overview",
                     "All active training runs, their stability and alerts.", items)


def _run(metric: str) -> str:
    return f'spikewatch_run_{metric}{{run="$run"}}'


# Step-axis panels use Grafana's trend panel: a time series drawn against a numeric, ascending
# x field (here `step`), with the time series' styles (log scale, threshold line, overrides).
# The other way, a time series panel with the step returned as its time column, renders wrongly:
# Grafana reads a number in the time column as epoch seconds, so the axis shows dates in 1970
# and the dashboard's time range (now-1h) hides every point. The trend panel ignores the time
# range (each query reads the whole run) and wants one frame with ascending x: one query per
# panel, one row per step. It draws no annotations, so events are marked on the step axis as
# points (loss spikes on the loss) and as rows of the step-ordered table; the annotations, also
# read from the store, mark the wall-time panels.
def _by_step(title: str, columns: list[tuple[str, str]],
             marks: list[tuple[str, str, str]] | None = None, **kw: Any) -> Panel:
    points = [{"matcher": {"id": "byName", "options": label}, "properties": [
        {"id": "custom.drawStyle", "value": "points"}, {"id": "custom.pointSize", "value": 9},
        {"id": "custom.showPoints", "value": "always"},
        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]}
        for label, _, _ in marks or []]
    return Panel("trend", title, [Target(sql=sql.series(columns, marks or []))],
                 extra_options={"xField": "step"}, overrides=points, **kw)


def _store_annotation(name: str, color: str, query: str) -> Json:
    return {"name": name, "datasource": STORE, "enable": True, "hide": False,
            "iconColor": color, "target": sql_target(query, "Anno")}


def _step_axis() -> list[Panel | Row]:
    """The run read from the SQL store against the training step."""
    return [
        Row("By training step (SQL store)"),
        _by_step("Loss by step", [("loss", "loss"), ("eval loss", "eval_loss")],
                 [("loss spike (event)", "loss", "loss_spike")], w=12, h=9, log_scale=True,
                 description="The stored loss per step (rank 0 or combined, as the API returns "
                 "it) and, where the job logs one, its clean eval_loss (whose 1.5× swings the "
                 "clean_loss_swings warning counts, and which pages as "
                 "clean_loss_swings_after_spike once it has spiked); red points: steps with a "
                 "loss_spike event. "
                 "Non-finite values are gaps, listed in the table below."),
        _by_step("Stability ratios by step", [
            ("two-secant", "stability_ratio_two_secant"), ("λ_grad", "stability_ratio"),
            ("λ_max", "stability_ratio_max"), ("secant", "stability_ratio_secant")],
            w=12, h=9, thresholds=EDGE, threshold_line=True,
            description="r = η·λ/2 per step; the two-secant estimate is measured every step, "
            "the others at their cadence (lines join the measured steps)."),
        _by_step("ρ (sampled) by step", [("ρ sampled", "rho_sampled"), ("ρ", "rho")],
                 w=8, h=8, log_scale=True),
        _by_step("Sign diversity by step", [("sign diversity", "sa_sign_diversity")], w=8, h=8,
                 unit="percentunit", thresholds=[(None, "red"), (0.1, "green")],
                 threshold_line=True),
        _by_step("Agent overhead by step", [("overhead", "agent_overhead")], w=8, h=8,
                 unit="percentunit", thresholds=[(None, "green"), (0.01, "red")],
                 threshold_line=True),
        Panel("table", "Events, alerts and non-finite values by step",
              [Target(sql=sql.EVENTS_BY_STEP)], w=24, h=8,
              description="Guard actions and releases, loss spikes, non-finite values, "
              "hyperparameter and momentum changes, and alert episodes, in step order."),
    ]


def run_detail() -> Json:
    """Everything spikewatch knows about one run, templated by $run."""
    items: list[Panel | Row] = [
        Panel("stat", "Last step", [Target(_run("last_step"), instant=True)], w=4, h=4),
        Panel("stat", "Stability ratio",
              [Target(_run("stability_ratio_two_secant"), instant=True)],
              w=5, h=4, thresholds=EDGE, decimals=3),
        Panel("stat", "Phase", [Target(_run("phase"), instant=True)], w=5, h=4,
              mappings=PHASES),
        Panel("stat", "Firing alerts",
              [Target(f"count({_run('alert_state')} == 2) or vector(0)", instant=True)],
              w=5, h=4, thresholds=[(None, "green"), (1, "red")]),
        Panel("stat", "Last heard from",
              [Target(f"time() - {_run('last_seen_timestamp_seconds')}", instant=True)],
              w=5, h=4, unit="s", thresholds=[(None, "green"), (120, "yellow"), (600, "red")]),
        *_step_axis(),
        Row("Edge of stability"),
        Panel("timeseries", "Stability ratio vs threshold 1", [
            Target(_run("stability_ratio_two_secant"), "two-secant (every step, the page's)"),
            Target(_run("stability_ratio"), "λ_grad (gradient direction)"),
            Target(_run("stability_ratio_max"), "λ_max (top eigenvalue)"),
            Target(_run("stability_ratio_secant"), "secant (update direction)"),
        ], w=24, h=9, thresholds=EDGE, threshold_line=True,
            description="r = η·λ/2 for three curvature estimates; r ≥ 1 sustained is beyond "
            "the edge of stability."),
        Panel("state-timeline", "Alert states",
              [Target(f"max by (rule, severity) ({_run('alert_state')})",
                      "{{rule}} ({{severity}})")], w=24, h=6, mappings=ALERT_STATES,
              thresholds=[(None, "yellow"), (2, "red")]),
        Panel("state-timeline", "Phase", [Target(_run("phase"), "phase")], w=24, h=3,
              mappings=PHASES),
        Row("Preconditioner"),
        Panel("timeseries", "ρ = ‖g‖/‖√v̂‖",
              [Target(_run("rho_sampled"), "ρ (sampled, every step)"), Target(_run("rho"), "ρ")],
              w=12, h=8,
              log_scale=True, description="ρ ≪ 1: v decays like β2 per step and η/√v̂ grows."),
        Panel("timeseries", "‖√v̂‖ decay per step (units of √β2)",
              [Target(_run("sqrt_v_decay"), "decay")], w=12, h=8,
              description="1 means v decays purely by β2 (no gradient signal)."),
        Row("Spectra"),
        Panel("timeseries", "Spectral alignment sign diversity",
              [Target(_run("sa_sign_diversity"), "sign diversity")], w=12, h=8,
              unit="percentunit", thresholds=[(None, "red"), (0.1, "green")],
              threshold_line=True,
              description="1 − |p₊ − p₋| of alignment signs; a collapse to 0 precedes explosion."),
        Panel("timeseries", "Gradient spike share", [Target(_run("grad_spike_share"), "share")],
              w=12, h=8, unit="percentunit",
              description="Energy share of the top ~1.5% singular directions of the gradients."),
        Row("Training"),
        Panel("timeseries", "Loss", [Target(_run("loss"), "loss")], w=12, h=8, log_scale=True),
        Panel("timeseries", "Max probability", [Target(_run("max_prob"), "max prob")],
              w=12, h=8, unit="percentunit"),
        Panel("timeseries", "Gradient norm", [Target(_run("grad_norm"), "‖g‖")], w=12, h=8,
              log_scale=True),
        Panel("timeseries", "Learning rate", [Target(_run("lr"), "lr")], w=12, h=8),
        Row("Agent"),
        Panel("timeseries", "Agent overhead (fraction of step time)",
              [Target(_run("agent_overhead"), "overhead")], w=12, h=8, unit="percentunit",
              thresholds=[(None, "green"), (0.01, "red")], threshold_line=True),
        Panel("timeseries", "Step time", [Target(_run("agent_step_time_seconds"), "step")],
              w=12, h=8, unit="s"),
    ]
    items += [
        Row("Guard"),
        Panel("timeseries", "Guard (attach(guard=True))", [
            Target(_run("guard_active"), "acting"),
            Target(_run("guard_actions"), "actions so far"),
        ], w=24, h=6, description="The agent's guard acting on a predicted spike; each action is "
            "also an annotation on every panel and a guard_action event in the API."),
    ]
    guard = {"datasource": DS, "enable": True, "hide": False, "iconColor": "green",
             "name": "Guard actions", "step": "15s", "titleFormat": "guard acted",
             "expr": f"changes({_run('guard_actions')}[1m]) > 0",
             "textFormat": "the agent's guard acted on a predicted loss spike"}
    return dashboard("spikewatch-run", "spikewatch / Run detail",
                     "Leading indicators of loss spikes for one run.", items, run_variable=True,
                     annotations=[
                         guard,
                         _store_annotation("Events (store)", "orange", sql.EVENT_ANNOTATIONS),
                         _store_annotation("Alerts (store)", "red", sql.ALERT_ANNOTATIONS)])


def _rate(metric: str, by: str = "") -> str:
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({metric}[$__rate_interval]))"


def _quantile(q: float) -> str:
    return (f"histogram_quantile({q}, sum by (le) "
            "(rate(spikewatch_write_latency_seconds_bucket[$__rate_interval])))")


def server_health() -> Json:
    """The daemon's own health: ingest, store, notifications."""
    items: list[Panel | Row] = [
        Panel("stat", "Server", [Target('up{job="spikewatch"}', "{{instance}}", instant=True)],
              w=4, h=4, mappings={0: ("down", "red"), 1: ("up", "green")}),
        Panel("stat", "Version", [Target("spikewatch_build_info", "{{version}}", instant=True)],
              w=4, h=4, extra_options={"textMode": "name", "colorMode": "none"}),
        Panel("stat", "Active runs", [Target("spikewatch_active_runs", instant=True)], w=4, h=4),
        Panel("stat", "Ingest queue depth",
              [Target("spikewatch_ingest_queue_depth", instant=True)], w=4, h=4,
              thresholds=[(None, "green"), (100, "yellow"), (1000, "red")]),
        Panel("stat", "Refused series (range)",
              [Target("sum(increase(spikewatch_refused_series_total[$__range]))", instant=True)],
              w=4, h=4, thresholds=[(None, "green"), (1, "red")]),
        Panel("stat", "Failed notifications (range)",
              [Target('sum(increase(spikewatch_notifications_total{outcome="failed"}[$__range]))'
                      " or vector(0)", instant=True)],
              w=4, h=4, thresholds=[(None, "green"), (1, "red")]),
        Row("Ingest"),
        Panel("timeseries", "Messages received",
              [Target(_rate("spikewatch_messages_received_total", "type"), "{{type}}")],
              w=8, h=8, unit="reqps"),
        Panel("timeseries", "Invalid messages by reason",
              [Target(_rate("spikewatch_messages_invalid_total", "reason"), "{{reason}}")],
              w=8, h=8, unit="reqps"),
        Panel("timeseries", "Deduplicated messages",
              [Target(_rate("spikewatch_messages_deduplicated_total"), "duplicates")],
              w=8, h=8, unit="reqps",
              description="Re-sent batches the server had already committed (harmless)."),
        Row("Store"),
        Panel("timeseries", "Points written",
              [Target(_rate("spikewatch_points_written_total"), "points/s")], w=8, h=8,
              unit="short"),
        Panel("timeseries", "Write latency", [Target(_quantile(0.5), "p50"),
                                              Target(_quantile(0.99), "p99")],
              w=8, h=8, unit="s", thresholds=[(None, "green"), (0.5, "red")],
              threshold_line=True),
        Panel("timeseries", "Ingest queue depth",
              [Target("spikewatch_ingest_queue_depth", "{{instance}}")], w=8, h=8,
              thresholds=[(None, "green"), (1000, "red")], threshold_line=True),
        Row("Alerts and notifications"),
        Panel("timeseries", "Alerts firing by severity",
              [Target("sum by (severity) (spikewatch_alerts_firing)", "{{severity}}")],
              w=12, h=8),
        Panel("timeseries", "Notifications",
              [Target(_rate("spikewatch_notifications_total", "notifier, outcome"),
                      "{{notifier}} {{outcome}}")], w=12, h=8, unit="reqps"),
    ]
    return dashboard("spikewatch-server", "spikewatch / Server health",
                     "The spikewatch daemon: ingest, store latency, queue, notifications.", items)


DASHBOARDS = {"fleet-overview.json": fleet, "run-detail.json": run_detail,
              "server-health.json": server_health}


def render(name: str) -> str:
    """The exact text of one dashboard file."""
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        (OUT / name).write_text(render(name), encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
