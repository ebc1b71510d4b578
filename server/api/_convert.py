"""Store rows → response models."""

from __future__ import annotations

from spikewatch.server.api._deps import RuleLike
from spikewatch.server.api._schemas import AlertOut, RuleOut, RunOut
from spikewatch.server.report._page import page_path
from spikewatch.server.store.rows import AlertRow, RunRow


def run_out(r: RunRow, firing: int) -> RunOut:
    return RunOut(name=r.name, created_at=r.created_at, last_seen=r.last_seen,
                  last_step=r.last_step, world_size=r.world_size, meta=r.meta, active=r.active,
                  firing_alerts=firing, page_url=page_path(r.name))


def alert_out(a: AlertRow) -> AlertOut:
    return AlertOut(run=a.run, rule=a.rule, severity=a.severity, state=a.state,
                    first_step=a.first_step, fired_step=a.fired_step,
                    resolved_step=a.resolved_step, value=a.value, started_at=a.started_at,
                    fired_at=a.fired_at, resolved_at=a.resolved_at, labels=dict(a.labels),
                    annotations=dict(a.annotations))


def rule_out(r: RuleLike) -> RuleOut:
    sev = r.severity
    return RuleOut(name=r.name, severity=str(getattr(sev, "value", sev)),
                   description=r.description, definition=r.to_dict())
