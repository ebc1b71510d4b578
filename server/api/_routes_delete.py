"""Route DELETE /api/v1/runs/{run}: delete a run with all its data (admin scope)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Protocol, runtime_checkable

from fastapi import APIRouter, HTTPException, Query, Response

from spikewatch.server.api._deps import Ctx, get_run_or_404, require_admin
from spikewatch.server.api._params import RunName
from spikewatch.server.api._schemas import ErrorOut

router = APIRouter(prefix="/runs", tags=["runs"])


@runtime_checkable
class RunDeleter(Protocol):
    """A store that can delete runs (`server.store.Store` is one)."""

    def delete_runs(self, names: Sequence[str]) -> int: ...


_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown run."},
    409: {"model": ErrorOut, "description": "The run is active and `force` was not given."},
    501: {"model": ErrorOut, "description": "This server's store cannot delete runs."},
}


@router.delete("/{run}", status_code=204, response_class=Response, responses=_RESPONSES,
               dependencies=[require_admin])
def delete_run(
    ctx: Ctx, run: RunName,
    force: Annotated[bool, Query(description="also delete a run that is still active")] = False,
) -> Response:
    """Delete a run with its sessions, series, histograms, events and alerts (admin scope).
    A run heard from within the server's active window is kept unless `force` is given."""
    if not isinstance(ctx.store, RunDeleter):
        raise HTTPException(501, "this server's store cannot delete runs")
    row = get_run_or_404(ctx, run)
    if row.active and not force:
        raise HTTPException(409, f"run {run!r} is active (it sent data recently); "
                                 "give force=true to delete it anyway")
    ctx.store.delete_runs([run])
    return Response(status_code=204)
