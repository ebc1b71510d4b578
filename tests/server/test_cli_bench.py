"""`spikewatch bench`: runs a benchmark of the source checkout with the arguments it does not know
itself, and says plainly where there is no checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from spikewatch.server import _cli_bench, cli
from tests.server._cli import ROOT, spikewatch


@pytest.mark.slow
@pytest.mark.parametrize("separator", [[], ["--"]])
def test_runs_the_benchmark_of_the_checkout_with_its_own_arguments(
        separator: list[str], tmp_path: Path) -> None:  # fmt: skip
    r = spikewatch("bench", "early-warning", *separator, "--list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert "mlp-w1000-lr0.01-s0" in names  # the seed experiment, listed by the runner itself
    assert any(line.split()[1:3] == ["minibatch", "control"] for line in r.stdout.splitlines())


@pytest.mark.slow
def test_the_benchmark_s_own_errors_and_status_come_through(tmp_path: Path) -> None:
    r = spikewatch("bench", "guard", "--arms", "no-such-arm", cwd=tmp_path)
    assert r.returncode == 2
    assert "no-such-arm" in r.stderr


def test_without_a_checkout_it_says_where_it_looked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setattr(_cli_bench, "_installed_root", lambda: tmp_path / "site-packages")
    monkeypatch.delenv(_cli_bench.CHECKOUT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "guard"]) == 2
    err = capsys.readouterr().err
    assert "run from a spikewatch source checkout" in err
    assert str(tmp_path / "site-packages") in err
    assert "--checkout DIR" in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_named_checkout_must_hold_the_benchmark(
        how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["bench", "early-warning"]
    if how == "flag":
        argv += ["--checkout", str(tmp_path)]
    else:
        monkeypatch.setenv(_cli_bench.CHECKOUT_ENV, str(tmp_path))
    assert cli.main(argv) == 2
    assert f"{tmp_path} is not a spikewatch source checkout" in capsys.readouterr().err


def test_finds_the_checkout_by_flag_env_package_or_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.delenv(_cli_bench.CHECKOUT_ENV, raising=False)
    assert _cli_bench.find_checkout("guard", ROOT) == ROOT
    assert _cli_bench.find_checkout("guard", None) == ROOT  # this test runs from the checkout
    monkeypatch.setattr(_cli_bench, "_installed_root", lambda: tmp_path)
    monkeypatch.chdir(ROOT)
    assert _cli_bench.find_checkout("early-warning", None) == ROOT  # the current directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(_cli_bench.CHECKOUT_ENV, str(ROOT))
    assert _cli_bench.find_checkout("early-warning", None) == ROOT


def test_other_commands_still_refuse_arguments_they_do_not_know(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["runs", "--no-such-option"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
