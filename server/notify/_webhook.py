"""Generic webhook notifier: POSTs each transition as JSON (non-finite values as strings)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from spikewatch.protocol.nonfinite import to_json
from spikewatch.server.types import AlertState, Transition

PAYLOAD_VERSION = 1


def payload(t: Transition) -> dict[str, Any]:
    """The JSON document sent for a transition (value NaN/±Inf as "NaN"/"Infinity"/"-Infinity")."""
    return {
        "version": PAYLOAD_VERSION,
        "rule": t.rule,
        "run": t.run,
        "severity": t.severity.value,
        "state": t.state.value,
        "step": t.step,
        "time": to_json(t.time),
        "value": to_json(t.value),
        "labels": dict(t.labels),
        "annotations": dict(t.annotations),
    }


class WebhookNotifier:
    """POSTs transitions whose state is in `states` (default: firing and resolved) to `url`."""

    def __init__(
        self,
        url: str,
        *,
        states: Iterable[AlertState] = (AlertState.FIRING, AlertState.RESOLVED),
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        name: str = "webhook",
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.name = name
        self.url = url
        self.states = frozenset(states)
        self._client = httpx.Client(timeout=timeout, headers=dict(headers or {}))

    def send(self, t: Transition) -> bool:
        """POST one transition; raises on a network error or a non-2xx answer."""
        if t.state not in self.states:
            return False
        r = self._client.post(self.url, json=payload(t))
        r.raise_for_status()
        return True

    def resend(self) -> bool:
        """Webhooks are fire-once: nothing to re-send."""
        return False

    def close(self) -> None:
        self._client.close()
