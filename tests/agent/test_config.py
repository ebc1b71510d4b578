"""Agent configuration: arguments over SPIKEWATCH_* environment variables over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq
import zmq.auth

from spikewatch.agent._config import DEFAULT_BUDGET, DEFAULT_ENDPOINT, ConfigError, resolve


def test_defaults_without_environment() -> None:
    cfg = resolve(env={})
    assert cfg.endpoint == DEFAULT_ENDPOINT
    assert cfg.profile == "default"
    assert cfg.overhead_budget == DEFAULT_BUDGET == 0.01
    assert cfg.curvature == "auto"
    assert cfg.ddp_ranks == "all"
    assert cfg.enabled is True
    assert cfg.spool_dir is None
    assert cfg.server_key is None
    assert cfg.client_secret_key is None
    assert cfg.run.startswith("run-")


def test_environment_sets_every_option(tmp_path: Path) -> None:
    env = {
        "SPIKEWATCH_ENDPOINT": "tcp://10.0.0.5:6000",
        "SPIKEWATCH_RUN": "exp-7.a",
        "SPIKEWATCH_PROFILE": "FULL",
        "SPIKEWATCH_OVERHEAD_BUDGET": "0.05",
        "SPIKEWATCH_SPOOL_DIR": str(tmp_path),
        "SPIKEWATCH_CURVATURE": "secant",
        "SPIKEWATCH_DDP_RANKS": "rank0",
        "SPIKEWATCH_DISABLED": "yes",
    }
    cfg = resolve(env=env)
    assert (cfg.endpoint, cfg.run, cfg.profile) == ("tcp://10.0.0.5:6000", "exp-7.a", "full")
    assert cfg.overhead_budget == 0.05
    assert cfg.spool_dir == tmp_path
    assert (cfg.curvature, cfg.ddp_ranks, cfg.enabled) == ("secant", "rank0", False)


def test_arguments_win_over_environment() -> None:
    env = {"SPIKEWATCH_RUN": "from-env", "SPIKEWATCH_PROFILE": "full",
           "SPIKEWATCH_OVERHEAD_BUDGET": "0.5", "SPIKEWATCH_DISABLED": "1"}
    cfg = resolve(run="from-arg", profile="light", overhead_budget=0.02, enabled=True, env=env)
    assert (cfg.run, cfg.profile, cfg.overhead_budget, cfg.enabled) == (
        "from-arg", "light", 0.02, True)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SPIKEWATCH_PROFILE": "heavy"}, "SPIKEWATCH_PROFILE 'heavy'.*light, default, full"),
        ({"SPIKEWATCH_OVERHEAD_BUDGET": "abc"}, "SPIKEWATCH_OVERHEAD_BUDGET 'abc'"),
        ({"SPIKEWATCH_OVERHEAD_BUDGET": "0"}, "a positive fraction"),
        ({"SPIKEWATCH_OVERHEAD_BUDGET": "-0.5"}, "a positive fraction"),
        ({"SPIKEWATCH_OVERHEAD_BUDGET": "nan"}, "a positive fraction"),
        ({"SPIKEWATCH_ENDPOINT": "localhost:5557"}, "ZeroMQ endpoint"),
        ({"SPIKEWATCH_RUN": "bad run/name"}, "run name"),
        ({"SPIKEWATCH_CURVATURE": "hessian"}, "auto, exact, fd, secant"),
        ({"SPIKEWATCH_DDP_RANKS": "some"}, "all, rank0"),
        ({"SPIKEWATCH_DISABLED": "maybe"}, "SPIKEWATCH_DISABLED"),
        ({"SPIKEWATCH_SERVER_KEY": "short"}, "40-character Z85"),
    ],
)
def test_bad_environment_values_are_clear_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(env=env)


def test_infinite_budget_never_stretches() -> None:
    assert resolve(env={"SPIKEWATCH_OVERHEAD_BUDGET": "inf"}).overhead_budget == float("inf")
    assert resolve(overhead_budget=2.0, env={}).overhead_budget == 2.0


def test_bad_argument_names_the_argument() -> None:
    with pytest.raises(ConfigError, match="overhead_budget="):
        resolve(overhead_budget=-1.0, env={})
    with pytest.raises(ConfigError, match="profile="):
        resolve(profile="nope", env={})


def test_spool_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        resolve(spool_dir=f, env={})


def test_curve_keys_from_environment_derive_the_public_key() -> None:
    server_pub, _ = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    cfg = resolve(env={"SPIKEWATCH_SERVER_KEY": server_pub.decode(),
                       "SPIKEWATCH_CLIENT_KEY": client_sec.decode()})
    assert cfg.server_key == server_pub.decode()
    assert cfg.client_secret_key == client_sec.decode()
    assert cfg.client_public_key == client_pub.decode()


def test_curve_key_file(tmp_path: Path) -> None:
    server_pub, _ = zmq.curve_keypair()
    _, secret_file = zmq.auth.create_certificates(str(tmp_path), "client")
    pub, sec = zmq.auth.load_certificate(secret_file)
    assert sec is not None
    cfg = resolve(env={"SPIKEWATCH_SERVER_KEY": server_pub.decode(),
                       "SPIKEWATCH_CLIENT_KEY_FILE": secret_file})
    assert (cfg.client_public_key, cfg.client_secret_key) == (pub.decode(), sec.decode())


def test_curve_key_errors(tmp_path: Path) -> None:
    server_pub, _ = zmq.curve_keypair()
    _, client_sec = zmq.curve_keypair()
    with pytest.raises(ConfigError, match="both the server's public key"):
        resolve(env={"SPIKEWATCH_CLIENT_KEY": client_sec.decode()})
    with pytest.raises(ConfigError, match="both the server's public key"):
        resolve(server_key=server_pub.decode(), env={})
    with pytest.raises(ConfigError, match="not both"):
        resolve(env={"SPIKEWATCH_SERVER_KEY": server_pub.decode(),
                     "SPIKEWATCH_CLIENT_KEY": client_sec.decode(),
                     "SPIKEWATCH_CLIENT_KEY_FILE": str(tmp_path / "x")})
    with pytest.raises(ConfigError, match="no such file"):
        resolve(env={"SPIKEWATCH_SERVER_KEY": server_pub.decode(),
                     "SPIKEWATCH_CLIENT_KEY_FILE": str(tmp_path / "missing.key_secret")})
    public_only, _ = zmq.auth.create_certificates(str(tmp_path), "c2")
    with pytest.raises(ConfigError, match="no secret-key"):
        resolve(env={"SPIKEWATCH_SERVER_KEY": server_pub.decode(),
                     "SPIKEWATCH_CLIENT_KEY_FILE": public_only})


def test_every_bad_value_is_named_and_no_key_is_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(curvature="hessian", env={"SPIKEWATCH_SAMPLE_FRACTION": "2",
                                          "SPIKEWATCH_CLIENT_KEY": "secret-but-short"})
    message = str(info.value)
    assert "curvature= 'hessian': choose one of" in message
    assert "SPIKEWATCH_SAMPLE_FRACTION '2': a fraction" in message
    assert "SPIKEWATCH_CLIENT_KEY: expected a 40-character Z85 CURVE key" in message
    assert "secret-but-short" not in message


def test_blank_variables_are_unset_and_values_are_stripped() -> None:
    cfg = resolve(env={"SPIKEWATCH_PROFILE": "  ", "SPIKEWATCH_RUN": " exp-1 ",
                       "SPIKEWATCH_DISABLED": ""})
    assert (cfg.profile, cfg.run, cfg.enabled) == ("default", "exp-1", True)
