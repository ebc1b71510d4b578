"""/healthz (the process answers) and /readyz (every injected readiness check passes)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from spikewatch.server.api._deps import Ctx
from spikewatch.server.api._schemas import HealthOut, ReadyOut

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """The process is up (no dependencies checked)."""
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
def readyz(ctx: Ctx) -> ReadyOut | JSONResponse:
    """200 when every check passes (DB reachable, migrations at head, collector up), else 503."""
    results: dict[str, str] = {}
    for name, check in ctx.checks.items():
        try:
            results[name] = "ok" if check() else "failed"
        except Exception as e:  # a check that raises is a failed check, never a 500
            results[name] = f"error: {type(e).__name__}: {str(e)[:200]}"
    ready = all(v == "ok" for v in results.values())
    out = ReadyOut(status="ok" if ready else "unavailable", checks=results)
    if not ready:
        log.info("not ready: %s", results)
        return JSONResponse(out.model_dump(mode="json"), status_code=503)
    return out
