"""What the API is given (store, rules, readiness checks, tokens) and the dependencies on it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from spikewatch.server.api._auth import Scope, Tokens
from spikewatch.server.store.reads import StoreReads
from spikewatch.server.store.rows import RunRow


class RuleLike(Protocol):
    """A loaded alert rule (server.rules.Rule satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def severity(self) -> Any: ...
    @property
    def description(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


Check = Callable[[], object]
"""A readiness check: returns truthy when ready, falsy or raises when not."""


@dataclass(slots=True)
class ApiContext:
    """Everything the routes read; kept on ``app.state.spikewatch``."""

    store: StoreReads
    rules: Callable[[], Sequence[RuleLike]] = lambda: ()
    reload_rules: Callable[[], Sequence[RuleLike]] | None = None
    checks: Mapping[str, Check] = field(default_factory=dict)
    tokens: Tokens | None = None


def context(request: Request) -> ApiContext:
    """The ApiContext of the app serving this request."""
    ctx: ApiContext = request.app.state.spikewatch
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]

_bearer = HTTPBearer(
    auto_error=False,
    description="Bearer token with scope read or admin; required only when the server has tokens.",
)


def authorize(tokens: Tokens | None, presented: str | None, needed: Scope) -> None:
    """Raise 401 (no/unknown token) or 403 (scope too small); a no-op when auth is off."""
    if tokens is None:
        return
    if not presented:
        raise HTTPException(401, "bearer token required", headers={"WWW-Authenticate": "Bearer"})
    scope = tokens.scope_of(presented)
    if scope is None:
        raise HTTPException(401, "invalid bearer token",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if not scope.allows(needed):
        raise HTTPException(403, f"this endpoint needs the {needed.value} scope")


def _require(needed: Scope) -> Callable[..., None]:
    def dependency(
        request: Request,
        cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        authorize(context(request).tokens, cred.credentials if cred else None, needed)

    return dependency


require_read = Depends(_require(Scope.READ))
require_admin = Depends(_require(Scope.ADMIN))


def get_run_or_404(ctx: ApiContext, run: str) -> RunRow:
    """The run, or HTTP 404."""
    row = ctx.store.get_run(run)
    if row is None:
        raise HTTPException(404, f"unknown run {run!r}")
    return row
