"""deploy/prometheus checked with the real promtool: config, rules, and the rule unit tests.

The unit tests are themselves checked: for each alert, the firing assertions fail against a rule
that never fires and the not-firing assertions fail against a rule that always fires.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._net import program
from tests.deploy.conftest import DEPLOY

PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "spikewatch-server.rules.yml"
TESTS = sorted((PROM / "tests").glob("*.test.yml"))

pytestmark = pytest.mark.prometheus


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([program("promtool"), *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)


def _alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_config_is_valid_and_rule_files_resolve(tmp_path: Path) -> None:
    """promtool checks that the scrape token file exists: it is mounted at run time (compose
    secret), so a copy of the config points at a token file made here."""
    config = PROM / "prometheus.yml"
    [job] = [j for j in yaml.safe_load(config.read_text(encoding="utf-8"))["scrape_configs"]
             if j["job_name"] == "spikewatch"]
    mounted = job["authorization"]["credentials_file"]
    token = tmp_path / "read.token"
    token.write_text("a-read-token-of-enough-length\n", encoding="utf-8")
    (tmp_path / "rules").symlink_to(PROM / "rules")
    copy = tmp_path / "prometheus.yml"
    copy.write_text(config.read_text(encoding="utf-8").replace(mounted, str(token)),
                    encoding="utf-8")
    r = _promtool("check", "config", copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout
    token.unlink()  # and the check is real: without the token file the config is refused
    r = _promtool("check", "config", copy)
    assert r.returncode != 0
    assert "read.token" in r.stdout + r.stderr


def test_rules_are_valid() -> None:
    r = _promtool("check", "rules", RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 17 rules found" in r.stdout


def test_rule_unit_tests_pass() -> None:
    assert len(TESTS) >= 2
    r = _promtool("test", "rules", *TESTS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """promtool really compares: a test expecting the wrong severity fails."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shutil.copy(RULES, rules_dir / RULES.name)
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    text = (PROM / "tests" / "server-alerts.test.yml").read_text(encoding="utf-8")
    bad = tests_dir / "bad.test.yml"
    bad.write_text(text.replace("{severity: page, job: spikewatch, instance: \"sw:8000\"}",
                                "{severity: warning, job: spikewatch, instance: \"sw:8000\"}", 1),
                   encoding="utf-8")
    r = _promtool("test", "rules", bad)
    assert r.returncode != 0
    assert "SpikewatchServerDown" in r.stdout + r.stderr


def _assertions_only(alert: str, firing: bool) -> dict[str, Any]:
    """All unit tests reduced to the assertions on `alert` that expect it firing (or not)."""
    tests = []
    rule_files = None
    for path in TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        rule_files = doc["rule_files"]
        for t in doc["tests"]:
            keep = [a for a in t.get("alert_rule_test", [])
                    if a["alertname"] == alert and bool(a.get("exp_alerts")) == firing]
            if keep:
                tests.append({**{k: v for k, v in t.items() if k != "promql_expr_test"},
                              "alert_rule_test": keep})
    return {"rule_files": rule_files, "evaluation_interval": "1m", "tests": tests}


def _mutant(tmp_path: Path, alert: str, expr: str | None, firing: bool) -> Path:
    """A copy of rules+tests where `alert` has `expr`, testing only its firing/not-firing cases."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert and expr is not None:
                rule["expr"] = expr
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(doc), encoding="utf-8")
    (tmp_path / "tests").mkdir(exist_ok=True)
    test = tmp_path / "tests" / f"{alert}-{firing}.test.yml"
    test.write_text(yaml.safe_dump(_assertions_only(alert, firing)), encoding="utf-8")
    return test


@pytest.mark.parametrize("alert", sorted(_alerts()))
def test_each_alert_is_tested_firing_and_not_firing(alert: str, tmp_path: Path) -> None:
    for firing, broken in ((True, "vector(0) > 1"), (False, "vector(1)")):
        kind = "firing" if firing else "not-firing"
        doc = _assertions_only(alert, firing)
        assert doc["tests"], f"{alert} has no {kind} assertion"
        original = _promtool("test", "rules", _mutant(tmp_path, alert, None, firing))
        assert original.returncode == 0, original.stdout + original.stderr
        mutated = _promtool("test", "rules", _mutant(tmp_path, alert, broken, firing))
        assert mutated.returncode != 0, (
            f"{alert}: the {kind} assertions still pass when the rule is `{broken}`")

