"""The spikewatch daemon: collector + writer, rule engine, notifiers, HTTP API, housekeeping.

Data path: agent → collector → `Store.write_many` (commit) → ack → for each observation
`RuleEngine.observe` → `Store.save_transitions` → `Dispatcher.submit` (non-blocking).

`run(settings)` blocks until SIGTERM/SIGINT, then stops reading new frames, writes and acks what
is queued, delivers queued notifications, stops HTTP and returns 0.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import make_url

from spikewatch.server._settings import Settings
from spikewatch.server._stats import Stats
from spikewatch.server.collector import Collector, CurveConfig
from spikewatch.server.store import Store, WriteResult
from spikewatch.server.types import Transition

log = logging.getLogger("spikewatch")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def safe_url(url: str) -> str:
    """A database URL fit for logs (password hidden)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database url>"


class Daemon:
    """Every server component, wired; `start()` then `stop()` (or `run()` for both)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.store: Store | None = None
        self.collector: Collector | None = None
        self.engine: Any = None
        self.dispatcher: Any = None
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._house = threading.Thread(target=self._housekeeping, name="spikewatch-housekeeping",
                                       daemon=True)
        self._rules_lock = threading.Lock()

    # --- wiring --------------------------------------------------------------------------------

    def _rules(self) -> None:
        if not _has("spikewatch.server.rules"):
            log.warning("server.rules is not available: alert rules are not evaluated")
            return
        from spikewatch.server.rules import RuleEngine, load_rules

        rules = load_rules(self.settings.rules)
        self.engine = RuleEngine(rules)
        log.info("loaded %d rules from %s", len(rules), self.settings.rules or "the default pack")

    def reload_rules(self) -> Sequence[Any]:
        """Re-read the rule file (all or nothing: a bad file raises and the old rules stay) and
        swap it in; alerts of rules that are gone end now. Returns the new rules."""
        if self.engine is None:
            raise RuntimeError("alert rules are not evaluated on this server")
        from spikewatch.server.rules import load_rules

        rules = load_rules(self.settings.rules)
        with self._rules_lock:
            ended = self.engine.replace_rules(rules)
        self._publish(ended)
        log.info("reloaded %d rules from %s (%d alerts ended)", len(rules),
                 self.settings.rules or "the default pack", len(ended))
        return list(self.engine.rules)

    def _notifiers(self) -> None:
        if not _has("spikewatch.server.notify"):
            return
        from spikewatch.server.notify import AlertmanagerNotifier, Dispatcher, WebhookNotifier

        s = self.settings
        notifiers: list[Any] = []
        for i, url in enumerate(s.alertmanager_urls):
            notifiers.append(AlertmanagerNotifier(url, name=f"alertmanager{i or ''}"))
        for i, url in enumerate(s.webhook_urls):
            notifiers.append(WebhookNotifier(url, name=f"webhook{i or ''}"))
        self.dispatcher = Dispatcher(notifiers)
        self.stats.set_notification_source(self.dispatcher.snapshot)

    def _publish(self, transitions: Sequence[Transition]) -> None:
        if not transitions:
            return
        assert self.store is not None
        self.store.save_transitions(transitions)
        if self.dispatcher is not None:
            for t in transitions:
                self.dispatcher.submit(t)

    def on_commit(self, results: Sequence[WriteResult]) -> list[Transition]:
        """After a commit and its acks: evaluate rules on the observations, persist and notify;
        the transitions (the collector tells the runs' agents)."""
        if self.engine is None:
            return []
        out: list[Transition] = []
        with self._rules_lock:
            for res in results:
                for obs in res.observations:
                    out.extend(self.engine.observe(obs, res.step_events.get(obs.step, ())))
        self._publish(out)
        return out

    def _housekeeping(self) -> None:
        """Retention and idle-run sweeps on a timer."""
        policy = self.settings.retention.policy()
        interval = self.settings.retention.interval_s
        next_retention = time.monotonic() + min(interval, 60.0)
        while not self._stop.wait(min(interval, 30.0)):
            try:
                if self.engine is not None:
                    with self._rules_lock:
                        swept = self.engine.sweep()
                    self._publish(swept)
                if time.monotonic() >= next_retention and self.store is not None:
                    deleted = self.store.apply_retention(policy)
                    log.info("retention: deleted %s", deleted)
                    next_retention = time.monotonic() + interval
            except Exception:
                log.exception("housekeeping failed (will retry)")

    def _api(self) -> None:
        s = self.settings
        if not _has("spikewatch.server.api"):
            log.warning("server.api is not available: no HTTP API")
            return
        import uvicorn

        from spikewatch.server.api import Tokens, create_app, readiness_checks
        from spikewatch.server.exporter import StoreExportSource, build_registry

        assert self.store is not None
        tokens = (Tokens.from_file(s.auth.api_tokens_file)
                  if s.auth.api_tokens_file is not None else None)
        registry = build_registry(StoreExportSource(self.store, self.stats,
                                                    active_window_s=s.active_window_s))
        engine = self.engine
        app = create_app(self.store, registry=registry,
                         rules=(lambda: engine.rules) if engine is not None else (),
                         reload_rules=self.reload_rules if engine is not None else None,
                         checks=readiness_checks(self.store, self.stats), tokens=tokens)
        config = uvicorn.Config(app, host=s.http_host, port=s.http_port, log_level="warning",
                                access_log=False, lifespan="off")
        self._http = uvicorn.Server(config)
        self._http_thread = threading.Thread(target=self._http.run, name="spikewatch-http",
                                             daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 15
        while not self._http.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server could not start on {s.http_host}:{s.http_port}")
            time.sleep(0.02)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the database and start every component; raises if one cannot start."""
        s = self.settings
        self.store = Store(s.db, active_window_s=s.active_window_s)
        self.store.upgrade()
        log.info("database %s at revision %s", safe_url(s.db), self.store.current())
        self._rules()
        self._notifiers()
        curve = None
        if s.auth.curve_secret_key_file is not None:
            curve = CurveConfig(s.auth.curve_secret_key_file, s.auth.curve_allowed_clients_file)
        elif s.auth.curve_allowed_clients_file is not None:
            raise ValueError("auth.curve_allowed_clients_file needs auth.curve_secret_key_file")
        ing = s.ingest
        self.collector = Collector(self.store, self.stats, s.zmq, queue_size=ing.queue_size,
                                   batch_max_messages=ing.batch_max_messages,
                                   batch_max_wait_s=ing.batch_max_wait_s,
                                   max_frame_bytes=ing.max_frame_bytes,
                                   on_commit=self.on_commit, curve=curve, limits=ing.limits())
        self.collector.start()
        self._api()
        self._house.start()
        log.info("collecting on %s%s; HTTP on http://%s:%d", self.collector.bound_endpoint,
                 " (CURVE)" if curve else "", s.http_host, s.http_port)

    def stop(self) -> None:
        """Graceful shutdown: what was acknowledged is committed."""
        self._stop.set()
        if self.collector is not None:
            self.collector.stop()  # stop reading, drain, commit, ack
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(10)
        if self._house.is_alive():
            self._house.join(10)
        if self.store is not None:
            self.store.close()
        log.info("stopped")

    def request_stop(self, *_: Any) -> None:
        """Signal handler: ask `run` to shut down."""
        self._stop.set()

    def run(self) -> int:
        """Start, wait for SIGTERM/SIGINT, stop; the exit status."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        while not self._stop.wait(0.5):
            if self.collector is not None and not self.collector.running:
                log.error("the collector stopped unexpectedly")
                self.stop()
                return 1
        log.info("shutting down")
        self.stop()
        return 0
