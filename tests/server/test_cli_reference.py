"""README's CLI reference against the real CLI: every command that `spikewatch ... --help` lists is
there with each of its long options, no line there names an option its command lacks, and the
part is what `scripts/cli-reference.py` prints."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.server._cli import ROOT, spikewatch

BEGIN = "<!-- cli-reference:"
END = "<!-- /cli-reference -->"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LINE = re.compile(r"^- `spikewatch((?: [a-z][a-z-]*)*)(?= |`)(.*?)`: ", re.M)


def _help(path: tuple[str, ...]) -> str:
    r = spikewatch(*path, "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def _subcommands(text: str) -> list[str]:
    """The subcommands a --help lists, indented under its COMMAND or ACTION positional (a long
    name's help goes on the next line, indented further)."""
    m = re.search(r"^  (?:COMMAND|ACTION)\n((?:    .*\n)+)", text, re.M)
    return [line.split()[0] for line in m.group(1).splitlines()
            if re.match(r"    [a-z]", line)] if m else []


def _options(text: str) -> set[str]:
    """Long options of a --help, from its options part (not from descriptions or epilogs)."""
    part = text.split("options:", 1)[1] if "options:" in text else ""
    return {o for line in part.splitlines() if line.startswith("  -")
            for o in OPTION.findall(line.strip().split("  ")[0])} - {"--help"}


def cli_tree() -> dict[tuple[str, ...], set[str]]:
    """Every command path the real CLI has (`()` is `spikewatch` itself) with its long options."""
    tree: dict[tuple[str, ...], str] = {(): _help(())}
    todo: list[tuple[str, ...]] = [(name,) for name in _subcommands(tree[()])]
    with ThreadPoolExecutor(4) as pool:
        while todo:
            helps = list(pool.map(_help, todo))
            tree.update(zip(todo, helps, strict=True))
            todo = [(*path, name) for path, text in zip(todo, helps, strict=True)
                    for name in _subcommands(text)]
    return {path: _options(text) for path, text in tree.items()}


def reference_part() -> str:
    readme = (ROOT / "README.md").read_text()
    assert readme.count(BEGIN) == 1
    assert readme.count(END) == 1
    return readme[readme.index(BEGIN):readme.index(END) + len(END)]


def test_readme_reference_names_every_command_and_option_and_no_other() -> None:
    tree = cli_tree()
    assert {("tail",), ("runs", "delete"), ("runs", "prune"), ("rules", "check"), ("keygen",),
            ("report",), ("backtest",)} <= set(tree)
    documented: dict[tuple[str, ...], set[str]] = {}
    for m in LINE.finditer(reference_part()):
        path = tuple(m.group(1).split())
        assert path not in documented, f"spikewatch {' '.join(path)} is listed twice"
        documented[path] = set(OPTION.findall(m.group(2)))
    # a command with subcommands and no option of its own (`rules`) only groups them
    groups = {path for path, options in tree.items()
              if path and not options and any(p[:len(path)] == path for p in tree if p != path)}
    assert set(documented) == set(tree) - groups
    for path, options in documented.items():
        assert options == tree[path], (f"spikewatch {' '.join(path)}: README has {options}, "
                                       f"--help has {tree[path]}")


def test_readme_reference_is_what_the_script_prints() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli-reference.py")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == reference_part(), (
        "README's CLI reference is stale: run `python scripts/cli-reference.py --write`")
