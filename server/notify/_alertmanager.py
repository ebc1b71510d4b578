"""Alertmanager API v2 notifier: firing alerts are pushed and re-sent, resolved ones get endsAt.

Alertmanager has no memory of a pushing client: an alert stays active until its endsAt, so while an
alert fires it is re-sent every `resend_interval` with endsAt = now + 4 × resend_interval (what
Prometheus does); if spikewatch goes away its alerts expire on their own. startsAt/endsAt use this
server's clock, not the training job's, so a skewed agent clock cannot produce endsAt < startsAt.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from spikewatch.server.types import AlertState, Transition


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class AlertmanagerNotifier:
    """Pushes FIRING and RESOLVED transitions to `POST {url}/api/v2/alerts`."""

    def __init__(
        self,
        url: str,
        *,
        resend_interval: float = 60.0,
        timeout: float = 5.0,
        generator_url: str | None = None,
        name: str = "alertmanager",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if resend_interval <= 0 or timeout <= 0:
            raise ValueError("resend_interval and timeout must be > 0")
        self.name = name
        self.resend_interval = resend_interval
        self._generator = generator_url.rstrip("/") if generator_url else None
        self._clock = clock
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self._firing: dict[tuple[str, str], tuple[Transition, float]] = {}  # → (t, startsAt)
        self._last_resend = clock()
        self._lock = threading.Lock()

    def firing(self) -> list[tuple[str, str]]:
        """(run, rule) of the alerts this notifier keeps re-sending."""
        with self._lock:
            return sorted(self._firing)

    def send(self, t: Transition) -> bool:
        """Push one transition; pending/inactive ones are not Alertmanager's business."""
        now = self._clock()
        key = (t.run, t.rule)
        if t.state is AlertState.FIRING:
            with self._lock:
                self._firing[key] = (t, now)
            self._post([self._alert(t, now, now + 4 * self.resend_interval)])
            return True
        if t.state is AlertState.RESOLVED:
            with self._lock:
                started = self._firing.pop(key, (t, now))[1]
            self._post([self._alert(t, started, max(now, started))])
            return True
        return False

    def resend(self) -> bool:
        """Re-send every firing alert if `resend_interval` has passed; True if it posted."""
        now = self._clock()
        if now - self._last_resend < self.resend_interval:
            return False
        self._last_resend = now
        with self._lock:
            alerts = [
                self._alert(t, s, now + 4 * self.resend_interval) for t, s in self._firing.values()
            ]
        if not alerts:
            return False
        self._post(alerts)
        return True

    def close(self) -> None:
        self._client.close()

    def _post(self, alerts: list[dict[str, Any]]) -> None:
        r = self._client.post("/api/v2/alerts", json=alerts)
        r.raise_for_status()

    def _alert(self, t: Transition, starts: float, ends: float) -> dict[str, Any]:
        labels = {**t.labels, "alertname": t.rule, "run": t.run, "severity": t.severity.value}
        value = f"{t.value:.6g}" if math.isfinite(t.value) else str(t.value)
        annotations = {**t.annotations, "step": str(t.step), "value": value}
        alert: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": _rfc3339(starts),
            "endsAt": _rfc3339(ends),
        }
        if self._generator:
            alert["generatorURL"] = f"{self._generator}/api/v1/runs/{quote(t.run, safe='')}/alerts"
        return alert
