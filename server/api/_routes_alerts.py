"""Routes /api/v1/alerts and /api/v1/rules (reload needs the admin scope)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from spikewatch.server.api._convert import alert_out, rule_out
from spikewatch.server.api._deps import Ctx, require_admin, require_read
from spikewatch.server.api._schemas import AlertOut, ErrorOut, RuleOut
from spikewatch.server.types import AlertState

log = logging.getLogger(__name__)
router = APIRouter(tags=["alerts"])


@router.get("/alerts", response_model=list[AlertOut], dependencies=[require_read])
def list_alerts(
    ctx: Ctx, state: Annotated[AlertState | None, Query(description="e.g. firing")] = None,
) -> list[AlertOut]:
    """Alert episodes of all runs, optionally in one state."""
    return [alert_out(a) for a in ctx.store.alerts(state=state.value if state else None)]


@router.get("/rules", response_model=list[RuleOut], dependencies=[require_read])
def list_rules(ctx: Ctx) -> list[RuleOut]:
    """The alert rules the server evaluates."""
    return [rule_out(r) for r in ctx.rules()]


@router.post(
    "/rules/reload", response_model=list[RuleOut], dependencies=[require_admin],
    responses={400: {"model": ErrorOut, "description": "Invalid rule file; old rules kept."},
               501: {"model": ErrorOut, "description": "This server cannot reload rules."}},
)
def reload_rules(ctx: Ctx) -> list[RuleOut]:
    """Re-read the rule file (admin scope). On error the running rules stay in force."""
    if ctx.reload_rules is None:
        raise HTTPException(501, "rule reload is not configured on this server")
    try:
        rules = ctx.reload_rules()
    except (OSError, ValueError) as e:
        log.warning("rule reload failed: %s", e)
        raise HTTPException(400, f"rule reload failed: {e}") from None
    return [rule_out(r) for r in rules]
