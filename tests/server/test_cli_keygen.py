"""`spikewatch keygen`: the real command writes key files the server and the agent accept, and
the settings it prints turn CURVE and API tokens on for a real daemon."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import zmq
import zmq.auth

from spikewatch.agent._config import resolve
from spikewatch.agent._transport import Transport
from spikewatch.protocol import wire
from spikewatch.server.api import Tokens
from tests.reliability._daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
SECRET = ("server.key_secret", "agent.key_secret", "api_tokens", "admin.token", "read.token")
PUBLIC = ("server.key", "agent.key", "allowed_agents")


def keygen(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real `spikewatch keygen` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIKEWATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "spikewatch.server.cli", "keygen", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=cwd,
                          check=False)


def printed_settings(stdout: str) -> dict[str, str]:
    """The VAR=value lines keygen printed, read as the shell would (the $(cat) one left out;
    only by its value's start: a Z85 key may itself hold "$(")."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("  SPIKEWATCH_") and not line.split("=", 1)[1].startswith('"$('):
            [word] = shlex.split(line)
            key, value = word.split("=", 1)
            out[key] = value
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _contents(d: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(d.iterdir())}


def test_keygen_writes_loadable_keys_secret_files_0600_and_prints_the_settings(
        tmp_path: Path) -> None:
    r = keygen("keys", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    keys = tmp_path / "keys"
    assert sorted(p.name for p in keys.iterdir()) == sorted(SECRET + PUBLIC)
    assert _mode(keys) == 0o700
    for name in SECRET:
        assert _mode(keys / name) == 0o600, name
    for name in PUBLIC:
        assert _mode(keys / name) == 0o644, name
    pairs = {}
    for who in ("server", "agent"):
        public, secret = zmq.auth.load_certificate(keys / f"{who}.key_secret")
        assert secret is not None
        assert zmq.curve_public(secret) == public
        assert zmq.auth.load_certificate(keys / f"{who}.key") == (public, None)
        pairs[who] = public.decode()
    assert pairs["server"] != pairs["agent"]
    allowed = [ln for ln in (keys / "allowed_agents").read_text().splitlines()
               if not ln.startswith("#")]
    assert allowed == [pairs["agent"]]
    tokens = Tokens.from_file(keys / "api_tokens")
    for scope in ("admin", "read"):
        token = (keys / f"{scope}.token").read_text().strip()
        assert tokens.scope_of(token) == scope
    settings = printed_settings(r.stdout)
    assert settings == {
        "SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE": str(keys / "server.key_secret"),
        "SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE": str(keys / "allowed_agents"),
        "SPIKEWATCH_AUTH__API_TOKENS_FILE": str(keys / "api_tokens"),
        "SPIKEWATCH_SERVER_KEY": pairs["server"],
        "SPIKEWATCH_CLIENT_KEY_FILE": str(keys / "agent.key_secret")}
    assert f'SPIKEWATCH_API_TOKEN="$(cat {keys / "read.token"})"' in r.stdout
    printed = r.stdout + r.stderr  # secrets are referred to by path, never printed
    for scope in ("admin", "read"):
        assert (keys / f"{scope}.token").read_text().strip() not in printed
    for who in ("server", "agent"):
        _, secret = zmq.auth.load_certificate(keys / f"{who}.key_secret")
        assert secret is not None
        assert secret.decode() not in printed

def test_keygen_refuses_to_overwrite_without_force_and_replaces_with_it(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert keygen("--out", keys, cwd=tmp_path).returncode == 0
    before = _contents(keys)
    r = keygen(keys, cwd=tmp_path)
    assert r.returncode == 2
    assert "already has server.key_secret" in r.stderr
    assert "--force" in r.stderr
    assert _contents(keys) == before  # nothing touched
    r = keygen(keys, "--agent", "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = _contents(keys)
    assert after["agent.key_secret"] != before["agent.key_secret"]
    assert after["server.key_secret"] == before["server.key_secret"]  # only the agent was asked
    assert after["api_tokens"] == before["api_tokens"]
    new_public = zmq.auth.load_certificate(keys / "agent.key")[0].decode()
    allowed = [ln for ln in after["allowed_agents"].splitlines() if not ln.startswith("#")]
    assert allowed == [new_public]  # the old key of that agent is no longer allowed
    assert _mode(keys / "agent.key_secret") == 0o600
    assert not [p for p in keys.iterdir() if p.name.endswith(".tmp")]


def test_keygen_adds_an_agent_and_writes_group_readable_secrets(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert keygen(keys, "--server", "--agent", "ci", "--group-readable",
                  cwd=tmp_path).returncode == 0
    r = keygen(keys, "--agent", "laptop", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in keys.iterdir()) == sorted(
        ["server.key", "server.key_secret", "ci.key", "ci.key_secret", "laptop.key",
         "laptop.key_secret", "allowed_agents"])
    assert _mode(keys) == 0o750
    assert _mode(keys / "server.key_secret") == 0o640
    assert _mode(keys / "laptop.key_secret") == 0o600
    allowed = {ln for ln in (keys / "allowed_agents").read_text().splitlines()
               if not ln.startswith("#")}
    assert allowed == {zmq.auth.load_certificate(keys / f"{a}.key")[0].decode()
                       for a in ("ci", "laptop")}
    server_public = zmq.auth.load_certificate(keys / "server.key")[0].decode()
    assert printed_settings(r.stdout)["SPIKEWATCH_SERVER_KEY"] == server_public
    assert printed_settings(r.stdout)["SPIKEWATCH_CLIENT_KEY_FILE"] == str(
        keys / "laptop.key_secret")


@pytest.mark.parametrize(("args", "message"), [
    ((), "give the directory"),
    (("a", "--out", "b"), "give the directory once"),
    (("keys", "--agent", "server"), "agent name 'server'"),
    (("keys", "--agent", "../up"), "agent name '../up'"),
])
def test_keygen_bad_input_is_a_clear_error(tmp_path: Path, args: tuple[str, ...],
                                           message: str) -> None:
    r = keygen(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "keys").exists()


def _wait_acked(t: Transport, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while t.counters().acked < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_an_agent_with_the_generated_keys_delivers_and_one_without_is_refused(
        tmp_path: Path) -> None:
    r = keygen("keys", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    settings = printed_settings(r.stdout)
    server_env = {k: v for k, v in settings.items() if k.startswith("SPIKEWATCH_AUTH__")}
    agent_env = {k: v for k, v in settings.items() if k not in server_env}
    read_token = (tmp_path / "keys" / "read.token").read_text().strip()
    daemon = Daemon(f"sqlite:///{tmp_path / 'spikewatch.db'}", tmp_path, env=server_env)
    daemon.start()
    try:
        daemon.wait_ready()
        config = resolve(run="with-keys", endpoint=daemon.zmq, env=agent_env)
        assert config.server_key == settings["SPIKEWATCH_SERVER_KEY"]
        keyed = Transport(config.endpoint, run=config.run, server_public_key=config.server_key,
                          client_secret_key=config.client_secret_key,
                          client_public_key=config.client_public_key, resend_after=0.5)
        plain_config = resolve(run="no-keys", endpoint=daemon.zmq, env={})
        assert plain_config.server_key is None
        plain = Transport(plain_config.endpoint, run=plain_config.run, resend_after=0.5)
        stranger = Transport(daemon.zmq, run="unknown-key", resend_after=0.5,
                             server_public_key=config.server_key)  # a fresh, unlisted key pair
        rec = wire.Record(1, time.time(), {"loss": 1.0})
        try:
            for t in (keyed, plain, stranger):
                assert t.hello({"who": t.run})
                assert t.submit([rec])
            _wait_acked(keyed, 2)
            assert keyed.counters().acked == 2
            time.sleep(2.0)  # the others had time to try, and retry
            assert plain.counters().acked == 0
            assert stranger.counters().acked == 0
        finally:
            for t in (keyed, plain, stranger):
                t.close(timeout=1.0)
        api = f"{daemon.http}/api/v1/runs"
        assert httpx.get(api, timeout=10).status_code == 401  # the token file is in force
        runs = httpx.get(api, headers={"Authorization": f"Bearer {read_token}"}, timeout=10)
        assert runs.status_code == 200
        assert [run["name"] for run in runs.json()] == ["with-keys"]
    finally:
        assert daemon.stop() == 0, daemon.tail()
