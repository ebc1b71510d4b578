"""`spikewatch rules check FILE`: the real command line on the shipped pack and on broken files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from spikewatch.server.rules import DEFAULT_PACK, load_rules

ROOT = Path(__file__).resolve().parents[2]


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spikewatch.server.cli", "rules", "check",
                           str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


def test_the_default_pack_is_valid_and_summarised_in_one_line() -> None:
    out = check(DEFAULT_PACK)
    assert out.returncode == 0, out.stderr
    names = [r.name for r in load_rules()]
    assert out.stdout == f"{DEFAULT_PACK}: valid, {len(names)} rules: {', '.join(names)}\n"
    assert out.stderr == ""


def test_a_broken_file_exits_1_with_every_error_naming_rule_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "team.yaml"
    bad.write_text("rules:\n"
                   "  - {name: ok, severity: page, condition: {event: nonfinite}}\n"
                   "  - {name: loud, severity: critical, condition: {event: nonfinite}}\n"
                   "  - name: typo\n"
                   "    severity: page\n"
                   "    condition: {all: [{metric: stabilty_ratio, op: '>=', value: 1}]}\n",
                   encoding="utf-8")
    out = check(bad)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"{bad}: rule 'loud': severity: must be 'info', 'warning' or 'page' (got 'critical')",
        f"{bad}: rule 'typo': condition.all[0].metric: unknown metric 'stabilty_ratio' "
        "(did you mean 'stability_ratio'?) (declare custom ones in extra_metrics)",
    ]
    bad.write_text("rules:\n- name: x\n  name: y\n", encoding="utf-8")
    dup = check(bad)
    assert (dup.returncode, dup.stderr) == (1, f"{bad}: invalid YAML: duplicate key 'name' "
                                               "(line 2)\n")


def test_a_file_that_cannot_be_read_exits_2(tmp_path: Path) -> None:
    missing = check(tmp_path / "missing.yaml")
    assert missing.returncode == 2
    assert "missing.yaml: cannot read rule file: No such file or directory" in missing.stderr
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("rules: [{name: caf\xe9}]".encode("latin-1"))
    assert check(latin1).returncode == 2
