"""Agent configuration: keyword arguments of `attach`, falling back to SPIKEWATCH_* variables.

An argument given to `attach` wins over the environment; the environment wins over the default.
Every bad value raises `ConfigError` naming the option and where it came from.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from spikewatch.agent._profiles import PROFILES
from spikewatch.protocol import wire

DEFAULT_ENDPOINT: Final = "tcp://127.0.0.1:5557"
DEFAULT_BUDGET: Final = 0.01
CURVATURE_CHOICES: Final = ("auto", "exact", "fd", "secant")
DDP_CHOICES: Final = ("all", "rank0")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
_ENDPOINT_RE: Final = re.compile(r"^(tcp|ipc|inproc)://\S+$")
_Z85_KEY_RE: Final = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


class ConfigError(ValueError):
    """An invalid agent option; the message names the option and its source."""


@dataclass(frozen=True, slots=True)
class Config:
    """The resolved options of one attached monitor."""

    run: str
    endpoint: str
    profile: str
    overhead_budget: float
    spool_dir: Path | None
    curvature: str
    sample_fraction: float | None  # of the coordinates the two-secant estimator samples
    ddp_ranks: str
    enabled: bool
    server_key: str | None
    client_secret_key: str | None
    client_public_key: str | None


def _src(name: str, env_var: str, from_env: bool) -> str:
    return f"{env_var}" if from_env else f"{name}="


def _choice(value: object, name: str, env_var: str, env: Mapping[str, str], default: str,
            choices: Iterable[str]) -> str:
    """The argument or environment value, lower-cased, checked against `choices`."""
    v, fe = _pick(value, env_var, env)
    out = default if v is None else str(v).lower()
    if out not in choices:
        raise ConfigError(f"{_src(name, env_var, fe)} {out!r}: choose one of {', '.join(choices)}")
    return out


def _pick(value: object, env_var: str, env: Mapping[str, str]) -> tuple[object, bool]:
    """The argument if given, else the stripped environment value; and whether it was env."""
    if value is not None:
        return value, False
    raw = env.get(env_var)
    if raw is None or raw.strip() == "":
        return None, False
    return raw.strip(), True


def _default_run() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"


def _check_key(key: str, what: str) -> str:
    if not _Z85_KEY_RE.match(key):
        raise ConfigError(f"{what}: expected a 40-character Z85 CURVE key")
    return key


def _read_client_key_file(path: str, what: str) -> tuple[str, str]:
    """(secret, public) from a ZeroMQ certificate file written by zmq.auth.create_certificates."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: no such file {path!r}")
    secret = public = None
    for line in p.read_text(encoding="utf-8").splitlines():
        m = re.match(r'^\s*(secret-key|public-key)\s*=\s*"(.{40})"\s*$', line)
        if m:
            if m.group(1) == "secret-key":
                secret = m.group(2)
            else:
                public = m.group(2)
    if secret is None:
        raise ConfigError(f"{what}: {path!r} holds no secret-key (use the .key_secret file)")
    if public is None:
        public = _public_from_secret(secret, what)
    return _check_key(secret, what), _check_key(public, what)


def _public_from_secret(secret: str, what: str) -> str:
    import zmq

    try:
        return str(zmq.curve_public(secret.encode()).decode())
    except Exception as e:  # zmq raises ZMQError / ValueError for bad keys
        raise ConfigError(f"{what}: not a valid CURVE secret key ({e})") from None


def resolve(
    *,
    run: str | None = None,
    endpoint: str | None = None,
    profile: str | None = None,
    overhead_budget: float | str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    curvature: str | None = None,
    sample_fraction: float | str | None = None,
    ddp_ranks: str | None = None,
    enabled: bool | None = None,
    server_key: str | None = None,
    client_secret_key: str | None = None,
    client_public_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Merge arguments over SPIKEWATCH_* environment variables over defaults, and validate."""
    env = os.environ if env is None else env

    v, fe = _pick(run, "SPIKEWATCH_RUN", env)
    run_s = _default_run() if v is None else str(v)
    if not wire.RUN_RE.match(run_s):
        raise ConfigError(f"{_src('run', 'SPIKEWATCH_RUN', fe)} {run_s!r}: a run name is 1-128 "
                          "characters of letters, digits and _.:- starting with a letter or digit")

    v, fe = _pick(endpoint, "SPIKEWATCH_ENDPOINT", env)
    ep = DEFAULT_ENDPOINT if v is None else str(v)
    if not _ENDPOINT_RE.match(ep):
        raise ConfigError(f"{_src('endpoint', 'SPIKEWATCH_ENDPOINT', fe)} {ep!r}: expected a "
                          "ZeroMQ endpoint such as tcp://127.0.0.1:5557")

    prof = _choice(profile, "profile", "SPIKEWATCH_PROFILE", env, "default", PROFILES)

    v, fe = _pick(overhead_budget, "SPIKEWATCH_OVERHEAD_BUDGET", env)
    if v is None:
        budget = DEFAULT_BUDGET
    else:
        try:
            budget = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{_src('overhead_budget', 'SPIKEWATCH_OVERHEAD_BUDGET', fe)} "
                              f"{v!r}: expected a number such as 0.01") from None
        if math.isnan(budget) or budget <= 0.0:
            raise ConfigError(f"{_src('overhead_budget', 'SPIKEWATCH_OVERHEAD_BUDGET', fe)} "
                              f"{budget!r}: a positive fraction of step time, e.g. 0.01 "
                              "(inf: never stretch cadences)")

    v, fe = _pick(spool_dir, "SPIKEWATCH_SPOOL_DIR", env)
    spool = None if v is None else Path(str(v) if fe else os.fspath(v))  # type: ignore[call-overload]
    if spool is not None and spool.exists() and not spool.is_dir():
        raise ConfigError(f"{_src('spool_dir', 'SPIKEWATCH_SPOOL_DIR', fe)} {str(spool)!r} "
                          "exists and is not a directory")

    curv = _choice(curvature, "curvature", "SPIKEWATCH_CURVATURE", env, "auto", CURVATURE_CHOICES)

    v, fe = _pick(sample_fraction, "SPIKEWATCH_SAMPLE_FRACTION", env)
    fraction: float | None = None
    if v is not None:
        where = _src("sample_fraction", "SPIKEWATCH_SAMPLE_FRACTION", fe)
        try:
            fraction = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{where} {v!r}: expected a number such as 0.01") from None
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"{where} {fraction!r}: a fraction of the coordinates in (0, 1] "
                              "(unset: 1 % of the model's bytes, at least 512 coordinates)")

    ranks = _choice(ddp_ranks, "ddp_ranks", "SPIKEWATCH_DDP_RANKS", env, "all", DDP_CHOICES)

    if enabled is None:
        raw = env.get("SPIKEWATCH_DISABLED", "").strip().lower()
        if raw in _TRUE:
            on = False
        elif raw in _FALSE:
            on = True
        else:
            raise ConfigError(f"SPIKEWATCH_DISABLED {raw!r}: use 1/true/yes or 0/false/no")
    else:
        on = bool(enabled)

    v, fe = _pick(server_key, "SPIKEWATCH_SERVER_KEY", env)
    skey = None if v is None else _check_key(str(v), _src("server_key", "SPIKEWATCH_SERVER_KEY",
                                                          fe))
    csec, cpub = client_secret_key, client_public_key
    if csec is None:
        raw_key = env.get("SPIKEWATCH_CLIENT_KEY", "").strip()
        raw_file = env.get("SPIKEWATCH_CLIENT_KEY_FILE", "").strip()
        if raw_key and raw_file:
            raise ConfigError("set SPIKEWATCH_CLIENT_KEY or SPIKEWATCH_CLIENT_KEY_FILE, not both")
        if raw_key:
            csec = _check_key(raw_key, "SPIKEWATCH_CLIENT_KEY")
        elif raw_file:
            csec, cpub = _read_client_key_file(raw_file, "SPIKEWATCH_CLIENT_KEY_FILE")
    else:
        csec = _check_key(csec, "client_secret_key=")
    if cpub is not None:
        cpub = _check_key(cpub, "client_public_key=")
    if csec is not None and cpub is None:
        cpub = _public_from_secret(csec, "client key")
    if (csec is None) != (skey is None):
        raise ConfigError("CURVE needs both the server's public key (server_key / "
                          "SPIKEWATCH_SERVER_KEY) and a client key (client_secret_key / "
                          "SPIKEWATCH_CLIENT_KEY[_FILE]), or neither")

    return Config(run=run_s, endpoint=ep, profile=prof, overhead_budget=budget, spool_dir=spool,
                  curvature=curv, sample_fraction=fraction, ddp_ranks=ranks, enabled=on,
                  server_key=skey, client_secret_key=csec, client_public_key=cpub)
