"""The run page of a real `spikewatch serve` (API tokens on) in a real headless Chromium: the DOM
it renders holds what the server's API says is stored (no screenshot comparison)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spikewatch.protocol.nonfinite import from_json
from spikewatch.server.process import ServerProcess
from spikewatch.server.report._data import SERIES
from spikewatch.server.report._html import CHART_IDS
from spikewatch.server.spikes import spike_onsets
from spikewatch.server.store import Store
from tests.e2e._chromium import chromium, require_chromium
from tests.server.test_report import RUN, _Page, fill_spiking_run
from tests.server.test_run_page import fill_guard_events

pytestmark = [pytest.mark.e2e, pytest.mark.chromium]

TOKEN = "chromium-read-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`spikewatch serve` with a read token over a store holding the spiking run, its alerts and
    two guard actions (written through the real `Store.write` before it starts)."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("run-page")
    db = f"sqlite:///{tmp / 'runs.db'}"
    store = Store(db)
    store.upgrade()
    fill_spiking_run(store)
    fill_guard_events(store)
    store.close()
    tokens = tmp / "tokens"
    tokens.write_text(f"{TOKEN} read\n")
    with ServerProcess(db, tmp, env={"SPIKEWATCH_AUTH__API_TOKENS_FILE": str(tokens)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api_url, timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:  # fmt: skip
        yield c


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One browser profile for the module: the cookie the first page sets serves the next."""
    return tmp_path_factory.mktemp("profile")


@pytest.fixture(scope="module")
def dom(server: ServerProcess, profile: Path) -> str:
    """The rendered DOM of the run page, opened as a user opens it: with ?token= once."""
    return chromium("--dump-dom", f"{server.http}/runs/{RUN}?token={TOKEN}", profile=profile)


@pytest.fixture(scope="module")
def page(dom: str) -> _Page:
    p = _Page()
    p.feed(dom)
    return p


def _series(api: httpx.Client, metric: str) -> list[tuple[int, float]]:
    doc = api.get(f"/runs/{RUN}/series", params={"metric": metric, "limit": 10000}).json()
    assert not doc["truncated"]
    return [(p["step"], v if (v := from_json(p["value"])) is not None else p["value"])
            for p in doc["points"]]


def _edge_count(groups: list[Any], metric: str) -> int:
    """Values of `metric` drawn as edge markers, as each marker row's title counts them."""
    counts = [re.match(rf"{metric}: (\d+) ", g.texts[0]) for g in groups
              if g.attrs.get("data-metric") == metric]  # fmt: skip
    assert all(counts), "a marker row's title does not count its markers"
    return sum(int(m.group(1)) for m in counts if m)


def test_page_renders_every_chart_and_its_script_ran(page: _Page, dom: str) -> None:
    assert list(page.svgs) == list(CHART_IDS)
    assert all(int(page.svgs[c]["data-points"]) > 0 for c in CHART_IDS)
    assert dom.count('class="cursor"') == len(CHART_IDS)  # the page's script ran in Chromium
    assert TOKEN not in dom  # the token was moved out of the address into a cookie


def test_each_series_holds_every_stored_point(page: _Page, api: httpx.Client) -> None:
    stored = {m["name"] for m in api.get(f"/runs/{RUN}/metrics").json()}
    drawn = {g.attrs["data-metric"]: g for g in page.groups if g.cls == "series"}
    assert set(drawn) == (stored & set(SERIES)) - {"phase"}
    steps: list[int] = []
    for metric, group in drawn.items():
        pts = _series(api, metric)
        steps += [pts[0][0], pts[-1][0]]
        edges = _edge_count([g for g in page.groups if g.cls == "nonfinite"], metric)
        # 600 steps on ~1000 pixel columns: nothing is thinned, every value drawn or marked
        assert int(group.attrs["data-points"]) + edges == len(pts), metric
        assert len(group.svg_paths) == 1
        assert len(re.findall(r"[ML]", group.svg_paths[0])) == int(group.attrs["data-points"])
    lo, hi = min(steps), max(steps)
    for cid in CHART_IDS:
        assert (int(page.svgs[cid]["data-step-lo"]), int(page.svgs[cid]["data-step-hi"])) == (
            lo, hi), cid


def test_marks_stand_where_the_stored_data_puts_them(page: _Page, api: httpx.Client) -> None:
    loss = _series(api, "loss")
    onsets = spike_onsets([(s, float(v)) for s, v in loss])
    assert onsets
    assert [int(g.attrs["data-step"]) for g in page.find("chart-loss", "onset")] == onsets
    nonfinite = " ".join(t for g in page.find("chart-loss", "nonfinite") for t in g.texts)
    for s, v in loss:
        if isinstance(v, float) and v != v:
            assert f"step {s}: NaN" in nonfinite
    acts = api.get(f"/runs/{RUN}/events", params={"type": "guard_action"}).json()
    assert acts
    assert [int(g.attrs["data-step"]) for g in page.find("chart-loss", "guard")] == [
        e["data"]["from_step"] for e in acts]
    alerts = api.get(f"/runs/{RUN}/alerts").json()
    # a row (fired, or folded away as pending) and a span per stored alert episode
    assert Counter((r["data-rule"], r["data-severity"]) for r in page.alert_rows) == Counter(
        (a["rule"], a["severity"]) for a in alerts)
    spans = Counter(g.attrs["data-rule"] for g in page.find("chart-alerts", "alert-span"))
    assert spans == Counter(a["rule"] for a in alerts)


def test_the_cookie_opens_the_index_and_it_links_the_page(server: ServerProcess, profile: Path,
                                                          dom: str) -> None:  # fmt: skip
    index = chromium("--dump-dom", f"{server.http}/runs", profile=profile)
    assert f'href="/runs/{RUN}"' in index
    assert TOKEN not in index
    assert "?token=TOKEN" in chromium("--dump-dom", f"{server.http}/runs",
                                      profile=profile.parent / "fresh-profile")
