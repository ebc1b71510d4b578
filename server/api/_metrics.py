"""The /metrics endpoint: prometheus_client's ASGI app over our registry, run off the event loop.

A scrape queries the store, so the (synchronous) exposition is baked in a worker thread, and the
bearer-token check applies as for the API (read scope) when tokens are configured.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio.to_thread
from fastapi import HTTPException
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from spikewatch.server.api._auth import Scope as TokenScope
from spikewatch.server.api._auth import Tokens
from spikewatch.server.api._deps import authorize


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if kind.lower() == "bearer" else None
    return None


class MetricsApp:
    """ASGI app serving the Prometheus exposition of `registry`."""

    def __init__(self, registry: CollectorRegistry, tokens: Tokens | None = None) -> None:
        self._prom: Any = make_asgi_app(registry)
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            authorize(self._tokens, _bearer(scope), TokenScope.READ)
        except HTTPException as e:
            await JSONResponse({"detail": e.detail}, e.status_code, headers=e.headers)(
                scope, receive, send)
            return
        request = await receive()
        replies: list[Message] = []

        async def replay() -> Message:
            return request

        async def collect(msg: Message) -> None:
            replies.append(msg)

        await anyio.to_thread.run_sync(
            lambda: asyncio.run(self._prom(scope, replay, collect)))
        for msg in replies:
            await send(msg)
