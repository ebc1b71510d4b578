"""spikewatch HTTP API: FastAPI under /api/v1, /healthz, /readyz, Prometheus /metrics, and the
HTML run pages under /runs.

Build it with `create_app(store, ...)`; everything it reads is injected (store, rules, readiness
checks, metrics registry, tokens), so tests run it over a real Store with no daemon around it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from spikewatch.server.api import _routes_alerts, _routes_health, _routes_pages, _routes_runs
from spikewatch.server.api._auth import Scope, TokenFileError, Tokens
from spikewatch.server.api._checks import readiness_checks
from spikewatch.server.api._deps import ApiContext, Check, RuleLike
from spikewatch.server.api._json import FLOAT_DOC
from spikewatch.server.api._metrics import MetricsApp
from spikewatch.server.api._routes_delete import router as delete_router
from spikewatch.server.exporter import package_version
from spikewatch.server.store.reads import StoreReads

__all__ = ["API_PREFIX", "Check", "RuleLike", "Scope", "TokenFileError", "Tokens",
           "create_app", "readiness_checks"]

API_PREFIX = "/api/v1"


def create_app(
    store: StoreReads,
    *,
    registry: CollectorRegistry | None = None,
    rules: Sequence[RuleLike] | Callable[[], Sequence[RuleLike]] = (),
    reload_rules: Callable[[], Sequence[RuleLike]] | None = None,
    checks: Mapping[str, Check] | None = None,
    tokens: Tokens | None = None,
    version: str | None = None,
) -> FastAPI:
    """The API app.

    registry: served at /metrics (e.g. `server.exporter.build_registry(...)`); None serves none.
    rules: the loaded rules, or a callable returning the current ones (GET /api/v1/rules).
    reload_rules: re-reads the rule file and returns the new rules (POST /api/v1/rules/reload).
    checks: readiness checks by name for /readyz (see `readiness_checks`); default: the
        database answers a query.
    tokens: bearer tokens with read/admin scopes; None disables auth.
    """
    if checks is None:
        checks = {"database": lambda: store.get_run("") is None}
    app = FastAPI(
        title="spikewatch", version=version or package_version(),
        description="Loss-spike early warning: runs, series, histograms, events, alerts and rules."
                    f"\n\nFloat fields: {FLOAT_DOC}",
    )
    app.state.spikewatch = ApiContext(
        store=store, rules=rules if callable(rules) else (lambda: rules),
        reload_rules=reload_rules, checks=dict(checks), tokens=tokens)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(_routes_runs.router)
    api.include_router(_routes_alerts.router)
    api.include_router(delete_router)  # DELETE /runs/{run} (admin)
    app.include_router(api)
    app.include_router(_routes_health.router)
    app.include_router(_routes_pages.router)
    if registry is not None:
        app.router.routes.append(Route("/metrics", MetricsApp(registry, tokens), methods=["GET"],
                                       include_in_schema=False))
    return app
