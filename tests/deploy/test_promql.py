"""Every PromQL expression in the dashboards and rule files is accepted by a real Prometheus."""

from __future__ import annotations

import httpx
import pytest

from tests.deploy.promql import all_expressions, concrete, variables

EXPRESSIONS = all_expressions()


def _query(client: httpx.Client, expr: str) -> dict[str, object]:
    r = client.get("/api/v1/query", params={"query": expr})
    body: dict[str, object] = r.json()
    return body


def test_expressions_found_in_every_file() -> None:
    files = {f for f, _, _ in EXPRESSIONS}
    assert files == {
        "deploy/grafana/dashboards/fleet-overview.json",
        "deploy/grafana/dashboards/run-detail.json",
        "deploy/grafana/dashboards/server-health.json",
        "deploy/prometheus/rules/spikewatch-server.rules.yml",
    }
    assert len(EXPRESSIONS) >= 50


def test_concrete_substitutes_grafana_variables() -> None:
    expr = 'sum(rate(x{run="$run"}[$__rate_interval])) + increase(y[${__range}])'
    assert variables(expr) == {"run", "__rate_interval", "__range"}
    assert concrete(expr, {"run": "r1"}) == 'sum(rate(x{run="r1"}[1m])) + increase(y[1h])'
    with pytest.raises(KeyError, match=r"\$nope"):
        concrete("x{a=\"$nope\"}")


@pytest.mark.prometheus
def test_prometheus_rejects_a_broken_expression(prometheus_url: str) -> None:
    """The check below can fail: a malformed expression is answered with an error."""
    with httpx.Client(base_url=prometheus_url, timeout=10.0) as client:
        body = _query(client, "sum by (run (spikewatch_run_loss)")
    assert body["status"] == "error"
    assert body["errorType"] == "bad_data"


@pytest.mark.prometheus
def test_every_expression_parses(prometheus_url: str) -> None:
    failures = []
    with httpx.Client(base_url=prometheus_url, timeout=10.0) as client:
        for file, title, expr in EXPRESSIONS:
            body = _query(client, concrete(expr))
            if body.get("status") != "success":
                failures.append(f"{file} :: {title}: {body.get('error')}\n    {expr}")
    assert not failures, "\n".join(failures)
