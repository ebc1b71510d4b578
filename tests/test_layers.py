"""The house rules: one import name, layers that point one way, a light agent install.

Every import statement of the shipped code is read (module level and inside functions), so a
lazy import cannot slip past; the wheel is built and its file list and requirements are read.
"""

from __future__ import annotations

import ast
import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "monitor", "agent", "integrations", "server", "migrations")
# what each package may import of spikewatch (besides itself); see docs/architecture.md
ALLOWED = {
    "protocol": set(),
    "monitor": {"protocol"},
    "agent": {"protocol", "monitor"},
    "integrations": {"agent"},  # the public names of agent.integrations
    "server": {"protocol"},
    "migrations": {"server"},
}
THIRD_PARTY_BANNED = {
    "protocol": {"torch", "numpy", "zmq", "sqlalchemy", "fastapi"},
    "server": {"torch"},
    "migrations": {"torch"},
}
GENERIC = {"agent", "server", "monitor", "migrations", "benchmarks", "tests", "scripts"}


def package_dir(pkg: str) -> Path:
    return ROOT / "spikewatch" / pkg if pkg in ("protocol", "integrations") else ROOT / pkg


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def shipped(pkg: str) -> list[Path]:
    return sorted(p for p in package_dir(pkg).rglob("*.py") if "versions" not in p.parts)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(pkg: str) -> None:
    bad = []
    for path in shipped(pkg):
        for line, mod in imports(path):
            top, *rest = mod.split(".")
            where = f"{path.relative_to(ROOT)}:{line}: {mod}"
            if top in GENERIC:
                bad.append(f"{where} (a generic top-level name; import spikewatch.{mod})")
            elif top == "spikewatch" and rest and rest[0] != pkg and rest[0] in PACKAGES \
                    and rest[0] not in ALLOWED[pkg]:  # fmt: skip
                bad.append(f"{where} ({pkg} may import only {sorted(ALLOWED[pkg]) or 'nothing'})")
            elif top in THIRD_PARTY_BANNED.get(pkg, set()):
                bad.append(f"{where} ({pkg} must not need {top})")
    assert not bad, "\n".join(bad)


def test_the_public_api_is_one_small_name() -> None:
    import spikewatch

    assert sorted(spikewatch.__all__) == ["Guard", "Monitor", "__version__", "attach"]
    assert callable(spikewatch.attach)


def test_protocol_and_server_import_without_torch() -> None:
    code = ("import sys, spikewatch, spikewatch.protocol.wire, spikewatch.server.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_the_wheel_installs_one_name_and_a_light_agent(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("spikewatch-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(meta_name))
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"spikewatch"}
    for sub in ("protocol/wire.py", "agent/_monitor.py", "monitor/two_secant.py", "server/cli.py",
                "integrations/lightning.py", "agent/integrations/huggingface.py",
                "server/rules/default.yaml", "migrations/env.py"):  # fmt: skip
        assert f"spikewatch/{sub}" in names, sub
    assert not any(n.startswith("spikewatch/benchmarks") for n in names)
    requires = meta.get_all("Requires-Dist") or []
    base = {r.split(";")[0].split(">")[0].split("[")[0].strip().lower()
            for r in requires if "extra ==" not in r}  # fmt: skip
    assert base == {"pyzmq", "numpy", "pydantic", "pydantic-settings"}
    server = {r.split(";")[0].split(">")[0].strip().lower()
              for r in requires if 'extra == "server"' in r}  # fmt: skip
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic"} <= server
