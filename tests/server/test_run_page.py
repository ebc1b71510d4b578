"""The server's HTML pages (GET /runs, GET /runs/{run}) in process, over a real SQLite store:
what they draw, the read-token rule as a browser follows it, 404/422/503, and the guard's marks."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from html import unescape
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from spikewatch.protocol import wire
from spikewatch.server.api import Tokens, create_app
from spikewatch.server.api import _routes_pages as pages
from spikewatch.server.api._page_auth import COOKIE
from spikewatch.server.report import from_api, from_store
from spikewatch.server.report._guards import GuardSpan, guard_spans, merge_spans
from spikewatch.server.report._html import CHART_IDS
from spikewatch.server.report._page import page_window
from spikewatch.server.store import Store
from spikewatch.server.types import AlertState, Severity, Transition
from tests._net import live_app
from tests.server.test_report import RUN, _Page, fill_spiking_run

READ_TOKEN = "page-read-token-0123456789"
GUARD_FIRST = (384, 420)  # acted from step 384, released at 420
GUARD_OPEN = 550  # acted from step 550, still acting


def fill_guard_events(store: Store, run: str = RUN) -> None:
    """Two guard actions as the agent streams them (one released, one still acting) and the
    `guard_acted` alerts the default rule pack raises for them."""
    now = time.time()
    why = "stability ratio 1.012 >= 0.99 with rho 0.031 < 0.08 for 2 readings"

    def act(step: int) -> wire.Event:
        return wire.Event("guard_action", {"action": "v", "factor": 0.5, "hold_steps": 50,
                                           "release_steps": 50, "from_step": step + 1,
                                           "stability_ratio": 1.012, "rho": 0.031, "why": why})

    release = wire.Event("guard_release", {"action": "v", "started_at_step": GUARD_FIRST[0],
                                           "released_at_step": GUARD_FIRST[1], "steps": 37,
                                           "extended": 0})  # fmt: skip
    store.write(wire.Batch(wire.Header("7" * 32, 1, run, sent_at=now), (
        wire.Record(step=GUARD_FIRST[0] - 1, time=now, events=(act(GUARD_FIRST[0] - 1),)),
        wire.Record(step=GUARD_FIRST[1], time=now, events=(release,)),
        wire.Record(step=GUARD_OPEN - 1, time=now, events=(act(GUARD_OPEN - 1),)))))
    T, A, info = Transition, AlertState, Severity.INFO
    store.save_transitions([
        T("guard_acted", run, info, A.FIRING, GUARD_FIRST[0] - 1, now, 1.0),
        T("guard_acted", run, info, A.RESOLVED, GUARD_FIRST[0] + 9, now, 0.0),
        T("guard_acted", run, info, A.FIRING, GUARD_OPEN - 1, now, 1.0),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path_factory.mktemp('pages') / 'pages.db'}")
    s.upgrade()
    fill_spiking_run(s)
    fill_guard_events(s)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as c:
        yield c


@pytest.fixture(scope="module")
def page(client: TestClient) -> _Page:
    r = client.get(f"/runs/{RUN}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    p = _Page()
    p.feed(r.text)
    return p


def test_run_page_draws_every_chart_and_the_alert_rows(page: _Page, store: Store) -> None:
    assert list(page.svgs) == list(CHART_IDS)
    assert all(int(page.svgs[c]["data-points"]) > 0 for c in CHART_IDS)
    # a row per episode: those that fired in the table, the others folded away below it
    assert Counter((a["data-rule"], a["data-severity"]) for a in page.alert_rows) == Counter(
        (a.rule, a.severity) for a in store.alerts(RUN))
    assert "report-png" not in page.ids  # the page draws no PNG
    assert page.ids["guard-table"]


def test_guard_actions_are_bands_on_the_loss_chart_and_rows(page: _Page) -> None:
    bands = page.find("chart-loss", "guard")
    assert [(int(g.attrs["data-step"]), g.attrs["data-end"]) for g in bands] == [
        (GUARD_FIRST[0], str(GUARD_FIRST[1])), (GUARD_OPEN, "")]
    assert "still acting" in bands[1].texts[0]
    assert "stability ratio 1.012" in bands[0].texts[0]
    assert not page.find("chart-stability", "guard")
    # the info alert of the guard keeps its row in the alert chart
    assert {g.attrs["data-rule"] for g in page.find("chart-alerts", "alert-span")} >= {
        "guard_acted"}


def test_guard_spans_pair_actions_with_releases_and_merge_per_column() -> None:
    events: list[tuple[int, str, dict[str, Any]]] = [
        (9, "guard_action", {"from_step": 10, "action": "lr", "why": "w"}),
        (9, "guard_action", {"from_step": 10, "action": "lr"}),  # a second rank
        (30, "guard_release", {"started_at_step": 10, "released_at_step": 30}),
        (30, "guard_release", {"started_at_step": 10}),  # nothing left open: ignored
        (49, "guard_action", {"action": "v"})]  # no from_step: the next step
    assert guard_spans(events) == [GuardSpan(10, 30, "lr", "w"), GuardSpan(50, None, "v", "")]
    # a "v" action lifting again while it holds names its action: one span, closed by its release
    lifted: list[tuple[int, str, dict[str, Any]]] = [
        (9, "guard_action", {"from_step": 10, "action": "v", "why": "w"}),
        (69, "guard_action", {"from_step": 70, "action": "v", "lift": 2, "started_at_step": 10}),
        (170, "guard_release", {"started_at_step": 10, "released_at_step": 170})]
    assert guard_spans(lifted) == [GuardSpan(10, 170, "v", "w")]
    # a catch-up of v while a "v" action holds: its own one-step span, the action still open
    caught: list[tuple[int, str, dict[str, Any]]] = [
        (9, "guard_action", {"from_step": 10, "action": "v", "why": "w"}),
        (40, "guard_action", {"from_step": 41, "action": "v_catch_up", "trigger": "runaway",
                              "why": "rho 20"}),
        (40, "guard_release", {"action": "v_catch_up", "started_at_step": 41,
                               "released_at_step": 41, "steps": 1})]
    assert guard_spans(caught) == [GuardSpan(10, None, "v", "w"),
                                   GuardSpan(41, 41, "v_catch_up", "rho 20")]
    many = [GuardSpan(s, s + 1, "v", "") for s in range(0, 10_000, 3)]
    merged = merge_spans(many, 10_000, min_gap=10.0)
    assert len(merged) == 1
    assert len(merged[0][2]) == len(many)
    assert len(merge_spans(many, 10_000, min_gap=2.0)) == len(many)


def test_report_reads_the_same_guard_actions_from_the_api(store: Store) -> None:
    stored = from_store(store, RUN).guards
    assert [(g.start, g.end, g.action) for g in stored] == [(*GUARD_FIRST, "v"),
                                                            (GUARD_OPEN, None, "v")]
    assert stored[0].why.startswith("stability ratio 1.012")
    with live_app(create_app(store)) as url, httpx.Client(base_url=url) as http:
        assert from_api(http, RUN).guards == stored


def test_index_links_every_run_and_the_api_gives_the_page_url(client: TestClient,
                                                              store: Store) -> None:
    r = client.get("/runs")
    assert r.status_code == 200
    assert f'<a href="/runs/{RUN}">{RUN}</a>' in r.text
    assert r.text.count('class="run-row"') == len(store.list_runs())
    assert client.get(f"/api/v1/runs/{RUN}").json()["page_url"] == f"/runs/{RUN}"
    assert {x["page_url"] for x in client.get("/api/v1/runs").json()} == {f"/runs/{RUN}"}


def test_unknown_run_is_404_and_a_bad_name_or_range_422(client: TestClient) -> None:
    r = client.get("/runs/nosuch")
    assert r.status_code == 404
    assert "no run named 'nosuch'" in unescape(r.text)
    assert client.get("/runs/bad%20name").status_code == 422
    assert client.get(f"/runs/{RUN}", params={"step_min": 9, "step_max": 3}).status_code == 422


def test_a_window_of_steps_draws_only_those(client: TestClient) -> None:
    r = client.get(f"/runs/{RUN}", params={"step_min": 350, "step_max": 450})
    assert r.status_code == 200
    p = _Page()
    p.feed(r.text)
    assert {(s["data-step-lo"], s["data-step-hi"]) for s in p.svgs.values()} == {("350", "450")}
    assert [g.attrs["data-step"] for g in p.find("chart-loss", "guard")] == [str(GUARD_FIRST[0])]
    assert f'href="/runs/{RUN}?step_max=349"' in r.text  # earlier steps
    assert f'href="/runs/{RUN}?step_min=451"' in r.text  # later steps
    # loss drawn once per step in the window, less the NaN and +Inf at the edge markers
    (loss,) = [g for g in p.find("chart-loss", "series") if g.attrs["data-metric"] == "loss"]
    assert int(loss.attrs["data-points"]) == 101 - 2


def test_page_window_bounds_a_huge_run() -> None:
    assert page_window(999, None, None, 100) == ((900, 999), True)
    assert page_window(50, None, None, 100) == ((0, 50), False)
    assert page_window(None, None, None, 100) == ((0, 0), False)
    assert page_window(10**9, 0, None, 100) == ((10**9 - 99, 10**9), True)
    assert page_window(999, 10, 20, 100) == ((10, 20), False)


def test_without_matplotlib_the_page_is_503_and_the_rest_works(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    for name in ("_draw", "_charts", "_html", "_png"):
        monkeypatch.delitem(sys.modules, f"spikewatch.server.report.{name}", raising=False)
    r = client.get(f"/runs/{RUN}")
    assert r.status_code == 503
    assert "pip install 'spikewatch[report]'" in unescape(r.text)
    assert client.get("/runs").status_code == 200
    assert client.get("/api/v1/runs").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_too_many_pages_at_once_is_503_with_retry_after(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(pages, "DRAW_WAIT_S", 0.05)
    held = [pages._drawing.acquire(timeout=5) for _ in range(pages.MAX_DRAWING)]
    try:
        r = client.get(f"/runs/{RUN}")
    finally:
        for _ in held:
            pages._drawing.release()
    assert r.status_code == 503
    assert r.headers["retry-after"] == "10"


# --- the read-token rule ------------------------------------------------------------------------


@pytest.fixture
def authed(store: Store) -> Iterator[TestClient]:
    app = create_app(store, tokens=Tokens.from_lines([f"{READ_TOKEN} read"]))
    with TestClient(app, follow_redirects=False) as c:
        yield c


def test_pages_need_a_read_token_like_the_api(authed: TestClient) -> None:
    for path in ("/runs", f"/runs/{RUN}", "/runs/nosuch"):
        r = authed.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "?token=TOKEN" in r.text
    assert authed.get("/runs", params={"token": "x" * 20}).status_code == 401
    r = authed.get("/runs", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert r.status_code == 200
    assert READ_TOKEN not in r.text


def test_token_in_the_address_moves_into_a_cookie(authed: TestClient) -> None:
    r = authed.get(f"/runs/{RUN}", params={"token": READ_TOKEN, "step_min": 300})
    assert r.status_code == 303
    assert r.headers["location"] == f"/runs/{RUN}?step_min=300"  # the token dropped
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={READ_TOKEN};")
    assert {"HttpOnly", "Path=/runs", "SameSite=lax"} <= {x.strip() for x in cookie.split(";")}
    r = authed.get("/runs")  # the client now sends the cookie
    assert r.status_code == 200
    assert READ_TOKEN not in r.text
    assert authed.get("/api/v1/runs").status_code == 401  # the API takes no cookie
    authed.cookies.set(COOKIE, "y" * 20)
    r = authed.get("/runs")
    assert r.status_code == 401
    assert f'{COOKIE}=""' in r.headers["set-cookie"]  # a bad cookie is cleared
