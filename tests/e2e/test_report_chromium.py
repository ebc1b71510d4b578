"""The HTML report rendered by a real headless Chromium: screenshot and rendered DOM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spikewatch.server.report._html import CHART_IDS
from spikewatch.server.report._layout import PHASES, SEVERITY_COLORS
from spikewatch.server.store import Store
from tests.e2e._chromium import chromium
from tests.server.test_report import RUN, fill_spiking_run

pytestmark = [pytest.mark.e2e, pytest.mark.chromium]

ROOT = Path(__file__).resolve().parents[2]
WINDOW = (1280, 2000)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a spiking run, written by the real `spikewatch report` command."""
    tmp = tmp_path_factory.mktemp("chromium")
    url = f"sqlite:///{tmp / 'run.db'}"
    store = Store(url)
    store.upgrade()
    fill_spiking_run(store)
    store.close()
    code = "import sys\nfrom spikewatch.server.cli import main\nsys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "report", "--run", RUN, "--db", url,
                        "--out", str(tmp / "out")], capture_output=True, text=True, timeout=90,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    return tmp / "out" / f"{RUN}.html"


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def test_screenshot_shows_the_charts(report_html: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
             report_html.as_uri(), profile=tmp_path / "profile")
    assert shot.is_file()
    assert shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.size == WINDOW
        px = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert float(px.std()) > 20.0, "the screenshot is (nearly) blank"

    def count(hex_color: str, tol: int = 10) -> int:
        return int((np.abs(px - np.array(_rgb(hex_color))).max(axis=2) <= tol).sum())

    # phase bands (backgrounds of every chart) and the page severity (alert spans, badges)
    for ph in (1, 2, 3):
        assert count(PHASES[ph][1]) > 2_000, PHASES[ph][0]
    assert count(SEVERITY_COLORS["page"]) > 4_000  # the alert spans, not only the badges
    assert count(SEVERITY_COLORS["warning"]) > 100


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, dict[str, str]] = {}
        self.series: dict[str, int] = {}
        self.cursors = 0
        self._svg = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self._svg = a.get("id", "")
            self.svgs[self._svg] = a
        elif tag == "g" and a.get("class") == "series":  # one group per line matplotlib drew
            self.series[self._svg] = self.series.get(self._svg, 0) + 1
        elif tag == "line" and a.get("class") == "cursor":
            self.cursors += 1


def test_rendered_dom_has_every_chart_with_its_points(report_html: Path, tmp_path: Path) -> None:
    dom_text = chromium("--dump-dom", report_html.as_uri(), profile=tmp_path / "profile")
    dom = _Dom()
    dom.feed(dom_text)
    assert list(dom.svgs) == list(CHART_IDS)
    for cid in CHART_IDS:
        assert int(dom.svgs[cid]["data-points"]) > 0, cid
    for cid in CHART_IDS[:-1]:
        assert dom.series.get(cid, 0) >= 1, f"{cid} drew no series"
    assert dom.cursors == len(CHART_IDS)  # the inline script ran in the page
    assert len(re.findall(r'<tr class="alert-row"', dom_text)) == 5
    assert re.search(r'<g [^>]*class="lead"[^>]*data-lead="12"[^>]*>\s*<title>[^<]*</title>'
                     r'\s*<text[^>]*>lead 12</text>', dom_text)
